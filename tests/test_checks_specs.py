"""Every check's known mistakes against its own cases (``transformer_lib.checks.engine.SPECS``).

For each registered check: its bug-free reference equals the package's own function on every
case; every known mistake changes the result of at least one case (else it could never be
named); and any two mistakes with different messages differ on at least one case, so the
diagnosis, which rests on every case, never has to choose between them.
"""

import itertools

import pytest
import torch

from transformer_lib import checks
from transformer_lib.checks.engine import SPECS, mistaken_output

# checks whose verdicts are not a comparison of outputs case by case, with the reason
WITHOUT_SPEC = {
    "check_resume": "compares a resumed run with an uninterrupted one; its failures are crashes or "
                    "differences in saved state, not alternative outputs",
}


def test_every_check_has_a_spec():
    assert set(SPECS) | set(WITHOUT_SPEC) == set(checks.__all__), set(checks.__all__) - set(SPECS)
    assert not set(SPECS) & set(WITHOUT_SPEC)


@pytest.fixture(autouse=True)
def one_thread():
    """As the checks themselves run (engine.isolated): the tensors are tiny, and several threads
    on a busy machine make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(SPECS))
def spec_and_cases(request):
    spec = SPECS[request.param]
    return spec, spec.cases()


def test_the_reference_is_the_packages_function(spec_and_cases):
    spec, cases = spec_and_cases
    assert cases
    for case in cases:
        assert spec.agree(spec.reference(case), spec.package(case)), (
            f"{spec.check}: {case.describe()}")


def test_every_mistake_shows_on_some_case(spec_and_cases):
    spec, cases = spec_and_cases
    wants = [spec.reference(case) for case in cases]
    for mistake in spec.mistakes():
        shows = [case.name for case, want in zip(cases, wants)
                 if not spec.agree(mistaken_output(mistake, case), want)]
        assert shows, f"{spec.check}: no case shows {mistake.says(cases[0])!r}"


def test_mistakes_with_different_messages_differ_on_some_case(spec_and_cases):
    spec, cases = spec_and_cases
    mistakes = spec.mistakes()
    outputs = [[mistaken_output(m, case) for case in cases] for m in mistakes]
    for (i, a), (j, b) in itertools.combinations(enumerate(mistakes), 2):
        if all(a.says(case) == b.says(case) for case in cases):
            continue
        assert not all(spec.agree(x, y) for x, y in zip(outputs[i], outputs[j])), (
            f"{spec.check}: no case tells apart\n  {a.says(cases[0])!r}\n  {b.says(cases[0])!r}")
