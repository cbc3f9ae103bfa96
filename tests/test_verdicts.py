"""satlib.verdicts.compare: the one rule for "helps" and "hurts" (a difference beyond the seed spread and a minimum,
every seed agreeing)."""

import pytest

from satlib.errors import ConfigurationError
from satlib.verdicts import compare


def test_a_difference_beyond_the_spread_with_every_seed_agreeing_has_a_direction():
    result = compare([5.3, 5.31, 5.29], [5.0, 5.02, 4.99])
    assert result.direction == "higher" and result.agree and result.seeds == 3
    assert result.difference == pytest.approx(0.2967, abs=1e-4) and result.spread == pytest.approx(0.03)
    assert compare([5.0, 5.02, 4.99], [5.3, 5.31, 5.29]).direction == "lower"


def test_inside_the_spread_or_with_a_disagreeing_seed_there_is_no_direction():
    assert compare([5.1, 5.5, 5.0], [5.0, 5.0, 5.0]).direction == "no clear difference"  # spread 0.5 > 0.2
    assert compare([5.3, 5.3, 4.9], [5.0, 5.0, 5.0]).direction == "no clear difference"  # one seed disagrees


def test_a_minimum_is_a_floor_for_the_spread():
    assert compare([30, 30, 30], [20, 20, 20], minimum=10).direction == "no clear difference"
    assert compare([31, 31, 31], [20, 20, 20], minimum=10).direction == "higher"


def test_the_boundary_is_not_decided_by_rounding():
    # means 33.33... and 23.33... differ by 10 plus one ulp: exactly the spread and the minimum, so no direction
    result = compare([40, 30, 30], [30, 20, 20], minimum=10)
    assert result.difference > 10 and result.direction == "no clear difference"


def test_one_seed_has_no_spread_and_bad_shapes_are_one_line_errors():
    single = compare([5.2], [5.0])
    assert single.one_seed and single.spread == 0 and single.direction == "higher"
    with pytest.raises(ConfigurationError, match="equal, non-empty 1-D arrays"):
        compare([1.0, 2.0], [1.0])
