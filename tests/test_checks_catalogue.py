"""Every lab check against the whole catalogue (``checks_catalogue.py``): each wrong
implementation is rejected with its diagnosis, each correct one written differently is accepted,
and few rejections end in the generic message.

The implementations live in the test modules of the checks (``test_checks_labNN.py``,
``test_checks_catalogue_labNN.py``), which register them; the tests that ask more of a verdict
than its diagnosis (the diff it shows, the case it names, the state it leaves) stay there.
Run ``pytest -s tests/test_checks_catalogue.py -k generic`` to see the counts.
"""

import checks_catalogue as catalogue
import pytest
from checks_catalogue import AMBIGUOUS, GENERIC

from transformer_lib import checks

ENTRIES = catalogue.entries()
WRONG = [pytest.param(e, id=e.id, marks=e.marks) for e in ENTRIES if e.diagnosis is not None]
ACCEPTED = [pytest.param(e, id=e.id, marks=e.marks) for e in ENTRIES if e.diagnosis is None]


@pytest.mark.parametrize("entry", WRONG)
def test_a_wrong_implementation_is_rejected_with_its_diagnosis(entry):
    with pytest.raises(AssertionError, match=f"^{entry.check}: ") as info:
        entry.run()
    message = str(info.value)
    assert entry.diagnosis in message, message
    assert AMBIGUOUS not in message, message
    if not entry.generic:
        assert GENERIC not in message, message


@pytest.mark.parametrize("entry", ACCEPTED)
def test_a_correct_implementation_is_accepted(entry, capsys):
    entry.run()
    assert capsys.readouterr().out == f"{entry.check}: all {entry.cases} cases pass\n"


def test_at_most_a_tenth_of_the_rejections_are_generic():
    rows, table = catalogue.counts(ENTRIES)
    print(table)
    for what, wrong, _, generic, _ in rows:
        assert 10 * generic <= wrong, (f"{what}: {generic} of {wrong} rejections are "
                                       f"generic\n{table}")
    for check in checks.__all__:  # every check has both kinds of entry
        kinds = {e.diagnosis is None for e in ENTRIES if e.check == check}
        assert kinds == {True, False}, f"{check}: {kinds}\n{table}"
