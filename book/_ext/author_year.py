"""Author-year labels in the bibliography, the same as in the citations, with a letter for one author's works of one
year ("Godey et al., 2024a", "Godey et al., 2024b").

sphinxcontrib-bibtex cites in author-year form but labels its bibliography with pybtex's alpha labels
(``[GdlCS24]``), and cites two works of the same first author and year alike ("Godey et al., 2024" for both). This
extension registers one style, ``author_year_lettered``, in three plugin groups:

* pybtex labels: ``<authors>, <year><letter>``, the author part formatted by the very template the citations use
  (sphinxcontrib-bibtex's :class:`PersonStyle`: "Mirsky", "Eckart and Young", "Godey et al."), a letter added
  where author part and year coincide, in bibliography order;
* pybtex formatting (``bibtex_default_style``): pybtex's ``plain`` (sorted by author, year, title) with those labels;
* sphinxcontrib-bibtex referencing (``bibtex_reference_style``): its author-year citations, whose year is the
  year of the bibliography's label, letter included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import pybtex.plugin
from pybtex.database import Entry
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.template import Node
from sphinx.application import Sphinx
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import PersonStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.referencing.basic_author_year import (
    BasicAuthorYearParentheticalReferenceStyle,
    BasicAuthorYearTextualReferenceStyle,
)
from sphinxcontrib.bibtex.style.referencing.extra_year import ExtraYearReferenceStyle
from sphinxcontrib.bibtex.style.template import join, join2, node, post_text, pre_text, reference

NAME = "author_year_lettered"
#: Between the author part and the year of a label; a label's year is what follows its last separator.
SEPARATOR = ", "
NO_YEAR = "n.d."


def author_part(entry: Entry) -> str:
    """The authors as a citation shows them: "Mirsky", "Eckart and Young", "Godey et al." (editors or title else)."""
    template = PersonStyle().author_or_editor_or_title(full=False)
    return template.format_data({"entry": entry, "style": SimpleNamespace(person=PersonStyle())}).render_as("text")


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels ``<authors>, <year>``, with ``a``, ``b``, ... after the year where two labels would coincide."""

    def format_labels(self, sorted_entries: Iterable[Entry]) -> Iterator[str]:
        labels = [f"{author_part(entry)}{SEPARATOR}{entry.fields.get('year', NO_YEAR)}" for entry in sorted_entries]
        count = Counter(labels)
        used: Counter[str] = Counter()
        for label in labels:
            if count[label] == 1:
                yield label
            else:
                yield label + chr(ord("a") + used[label])
                used[label] += 1


class AuthorYearStyle(PlainStyle):
    """pybtex's plain bibliography (sorted by author, year, title) labelled by :class:`AuthorYearLabelStyle`."""

    default_label_style = NAME


@node
def label_year(children: list, data: dict[str, Any]) -> Text:
    """The year of the entry's bibliography label, letter included (``2024b``)."""
    assert not children
    return Text(data["formatted_entry"].label.rsplit(SEPARATOR, 1)[-1])


@dataclass
class LetteredParenthetical(BasicAuthorYearParentheticalReferenceStyle):
    """``[Godey et al., 2024b]``: sphinxcontrib-bibtex's parenthetical author-year template, year from the label."""

    def inner(self, role_name: str) -> Node:
        return join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
            pre_text,
            reference[
                join(sep=self.author_year_sep)[
                    self.person.author_or_editor_or_title(full="s" in role_name),
                    label_year,
                ]
            ],
            post_text,
        ]


@dataclass
class LetteredTextual(BasicAuthorYearTextualReferenceStyle):
    """``Godey et al. [2024b]``: sphinxcontrib-bibtex's textual author-year template, year from the label."""

    def inner(self, role_name: str) -> Node:
        return join(sep=self.text_reference_sep)[
            self.person.author_or_editor_or_title(full="s" in role_name),
            join[
                self.bracket.left,
                join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[pre_text, reference[label_year], post_text],
                self.bracket.right,
            ],
        ]


@dataclass
class LetteredYear(ExtraYearReferenceStyle):
    """``2024b`` (``{cite:year}``): the year from the label."""

    def inner(self, role_name: str) -> Node:
        return reference[label_year]


LETTERED = {
    BasicAuthorYearParentheticalReferenceStyle: LetteredParenthetical,
    BasicAuthorYearTextualReferenceStyle: LetteredTextual,
    ExtraYearReferenceStyle: LetteredYear,
}


@dataclass
class AuthorYearLetteredReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's ``author_year`` referencing style with every year taken from the bibliography label."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for index, style in enumerate(self.styles):
            lettered = LETTERED.get(type(style))
            if lettered is not None:
                self.styles[index] = lettered(**{f.name: getattr(style, f.name) for f in fields(style) if f.init})
        self.role_style.update((role, style) for style in self.styles for role in style.role_names())


def setup(app: Sphinx) -> dict[str, Any]:
    pybtex.plugin.register_plugin("pybtex.style.labels", NAME, AuthorYearLabelStyle)
    pybtex.plugin.register_plugin("pybtex.style.formatting", NAME, AuthorYearStyle)
    register_plugin("sphinxcontrib.bibtex.style.referencing", NAME, AuthorYearLetteredReferenceStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
