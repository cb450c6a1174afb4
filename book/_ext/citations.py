"""One citation style on every page: author and year (a Sphinx extension).

The text cites with ``bibtex_reference_style: author_year`` ("Vaswani *et al.*, 2017"), so the
references page labels its entries the same way ("Vaswani et al., 2017"), not with the default
alpha keys ("VSP+17"). This registers the pybtex style ``author_year``, which
``bibtex_default_style`` in ``_config.yml`` selects: pybtex's ``unsrt`` entries, sorted by
author, year and title, with author-year labels (one author: "Post, 2018"; two: "Press and
Wolf, 2017"; more: "Vaswani et al., 2017"; "2017a", "2017b" where two labels would be equal).
Hand-written; lives in ``book/_ext``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

STYLE = "author_year"


def _last_name(person) -> str:
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


def author_year(entry) -> str:
    """The label of one entry: its authors' (else editors') last names, and its year."""
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(person) for person in persons]
    if not names:
        who = entry.fields.get("organization") or entry.key
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries: Iterable) -> Iterator[str]:
        labels = [author_year(entry) for entry in sorted_entries]
        count, seen = Counter(labels), Counter()
        for label in labels:
            if count[label] > 1:  # "Vaswani et al., 2017a", "... 2017b"
                seen[label] += 1
                label += "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            yield label


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
