"""Independent checks of the checkers in mmvae_nb.grading for MMVAE's stratified bounds and DReG: correct answers written
differently from the library's are accepted, the classic wrong ones rejected by the property (and message) meant to."""
import json, math
from pathlib import Path
import pytest
import torch
from torch.distributions import Normal

from mmvae_nb.grading import check_stratified_bound, check_dreg, make_student, passed, _execute

torch.set_num_threads(1)
ASSIGNMENTS = Path(__file__).resolve().parents[1] / 'nbs' / 'assignments'


def _failures(results):
    return {r.check: r.message for r in results if not r.passed}


# ---- stratified bounds ----------------------------------------------------------------------------------------

def _loop_bound(lj, lq, kind):
    "The three stratified bounds one item at a time, in plain Python floats (log-sum-exp by hand)."
    M, K, B = lj.shape
    def lse(xs): m = max(xs); return m + math.log(sum(math.exp(x - m) for x in xs))
    out = []
    for b in range(B):
        lw = [[lj[m, k, b].item() - (lse([lq[m, k, b, j].item() for j in range(M)]) - math.log(M)) for k in range(K)]
              for m in range(M)]
        if kind == 'elbo': out.append(sum(map(sum, lw)) / (M * K))
        elif kind == 'iwae_looser': out.append(sum(lse(row) - math.log(K) for row in lw) / M)
        else: out.append(lse([v for row in lw for v in row]) - math.log(M * K))
    return torch.tensor(out, dtype=lj.dtype)


def _with(log_mix=None, looser=None):
    def bound(lj, lq, kind):
        M, K = lj.shape[:2]
        lw = lj - (log_mix(lq) if log_mix else torch.logsumexp(lq, -1) - math.log(M))
        if kind == 'elbo': return lw.mean((0, 1))
        if kind == 'iwae_looser': return looser(lw) if looser else (torch.logsumexp(lw, 1) - math.log(K)).mean(0)
        return torch.logsumexp(lw.flatten(0, 1), 0) - math.log(M * K)
    return bound


def test_stratified_accepts_a_brute_force_loop():
    assert passed(check_stratified_bound(_loop_bound, verbose=False))


STRATIFIED_WRONG = [
    ('geometric-mean mixture', _with(log_mix=lambda lq: lq.mean(-1)), 'ELBO', 'values differ'),
    ('no - log M', _with(log_mix=lambda lq: torch.logsumexp(lq, -1)), 'identical experts', 'M identical experts'),
    ('own expert only', _with(log_mix=lambda lq: torch.stack([lq[m, ..., m] for m in range(lq.shape[0])])),
     'every expert in q_mix', "other experts' densities"),
    ('mean over m inside the log', _with(looser=lambda lw: torch.logsumexp(lw.flatten(0, 1), 0) - math.log(lw[:, :, 0].numel())),
     'looser IWAE', 'looser IWAE of random'),
    ('sum over m inside the log', _with(looser=lambda lw: torch.logsumexp(torch.logsumexp(lw, 1) - math.log(lw.shape[1]), 0)),
     'order', 'ELBO <= looser IWAE <= IWAE fails'),
    ('exp, then log', _with(looser=lambda lw: torch.log(torch.exp(lw).mean(1)).mean(0)), 'large magnitudes', 'non-finite'),
]


@pytest.mark.parametrize('name,fn,check,words', STRATIFIED_WRONG, ids=[c[0] for c in STRATIFIED_WRONG])
def test_stratified_rejects(name, fn, check, words):
    fails = _failures(check_stratified_bound(fn, verbose=False))
    assert check in fails and words in fails[check], (name, fails)


def test_geometric_mean_is_exact_for_identical_experts():
    "The geometric-mean mistake passes 'identical experts' (copies agree): only the random-value checks can catch it."
    fails = _failures(check_stratified_bound(_with(log_mix=lambda lq: lq.mean(-1)), verbose=False))
    assert 'identical experts' not in fails and 'order' not in fails


# ---- DReG -----------------------------------------------------------------------------------------------------

def _dreg_without_hook(log_joint, loc, scale, eps):
    "A correct DReG with no hook: z' = w~ z + (1 - w~) sg(z) has z's value and carries the second w~ into z's gradient."
    z = loc + scale * eps
    q = Normal(loc.detach(), scale.detach())
    w = torch.softmax((log_joint(z) - q.log_prob(z).sum(-1)).detach(), 0)[..., None]
    z2 = w * z + (1 - w) * z.detach()
    return (w[..., 0] * (log_joint(z2) - q.log_prob(z2).sum(-1))).sum(0)


def _variant(live_q=False, weights=lambda lw: torch.softmax(lw.detach(), 0), hook=True, power=1):
    def surrogate(log_joint, loc, scale, eps):
        z = loc + scale * eps
        q = Normal(loc, scale) if live_q else Normal(loc.detach(), scale.detach())
        log_w = log_joint(z) - q.log_prob(z).sum(-1)
        w = weights(log_w)
        if hook: z.register_hook(lambda g: g * w[..., None])
        return (w ** power * log_w).sum(0)
    return surrogate


def test_dreg_accepts_an_implementation_without_hooks():
    assert passed(check_dreg(_dreg_without_hook, verbose=False))
    assert passed(check_dreg(_variant(), verbose=False))


DREG_WRONG = [
    ('no stop-gradient', _variant(live_q=True), 'exact posterior', 'q the exact posterior'),
    ('weights not squared', _variant(hook=False), 'encoder gradient', 'values differ'),
    ('unnormalised weights', _variant(weights=lambda lw: lw.detach().exp()), 'K = 1', 'path gradient'),
    ('plain IWAE', lambda lj, loc, scale, eps: torch.logsumexp(
        lj(loc + scale * eps) - Normal(loc, scale).log_prob(loc + scale * eps).sum(-1), 0), 'exact posterior', 'exact posterior'),
    ('w~^2 in the sum, no hook', _variant(hook=False, power=2), 'decoder gradient', "IWAE's"),
    ('exp(log w) / sum', _variant(weights=lambda lw: lw.detach().exp() / lw.detach().exp().sum(0)), 'large magnitudes', 'not finite'),
    ('summed over the batch', lambda *a: _variant()(*a).sum(), 'shape', 'one value per item'),
]


@pytest.mark.parametrize('name,fn,check,words', DREG_WRONG, ids=[c[0] for c in DREG_WRONG])
def test_dreg_rejects(name, fn, check, words):
    fails = _failures(check_dreg(fn, verbose=False))
    assert check in fails and words in fails[check], (name, fails)


# ---- the two assignments, both ways ---------------------------------------------------------------------------

@pytest.mark.parametrize('stem', ['08_stratified_bound', '09_dreg'])
def test_assignment_both_ways(stem, tmp_path, monkeypatch, capsys):
    solution = ASSIGNMENTS / f'{stem}.ipynb'
    student = make_student(solution, tmp_path / 'student.ipynb')
    for who, nb in (('solution', solution), ('student', student)):
        log = tmp_path / f'{who}.jsonl'
        monkeypatch.setenv('MMVAE_NB_GRADING_JSON', str(log))
        _execute(str(nb))
        got = [json.loads(l) for l in log.read_text().splitlines()]
        assert len(got) >= 6 and all(r['passed'] == (who == 'solution') for r in got), (who, got)
        assert who == 'solution' or {r['message'] for r in got} == {'not implemented yet'}


# ---- grading a folder of submissions ---------------------------------------------------------------------------

def _submission(student_nb: Path, out: Path, body: str):
    "The student version with the function body replaced by `body` (what a student hands in)."
    nb = json.loads(student_nb.read_text())
    for c in nb['cells']:
        c['source'] = ''.join(c['source']).replace("raise NotImplementedError('your code here')", body).splitlines(True)
    out.write_text(json.dumps(nb))


def test_grade_a_folder(tmp_path):
    "One correct, one wrong (the naive formula), one that raises, one that loops: the CSV has what each deserves."
    import csv
    from mmvae_nb.grading import grade
    student = make_student(ASSIGNMENTS / '01_log_sum_exp.ipynb', tmp_path / 'student.ipynb')
    sub = tmp_path / 'submissions'; sub.mkdir()
    _submission(student, sub / 'correct.ipynb', "m = x.detach().amax(dim, keepdim=True)\n"
                "    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))\n"
                "    return (m + torch.log(torch.exp(x - m).sum(dim, keepdim=True))).squeeze(dim)")
    _submission(student, sub / 'naive.ipynb', "return torch.log(torch.exp(x).sum(dim))")
    _submission(student, sub / 'raises.ipynb', "raise ValueError('I gave up')")
    _submission(student, sub / 'loops.ipynb', "while True: pass")
    rows = grade(sub, tmp_path / 'grades.csv', timeout=20)
    table = list(csv.DictReader((tmp_path / 'grades.csv').open()))
    assert [dict(r, passed=str(r['passed'])) for r in rows] == table        # what it returns is what it wrote
    by = {}
    for r in table: by.setdefault(r['student'], {})[r['check']] = (r['passed'] == 'True', r['message'])
    assert set(by) == {'correct', 'naive', 'raises', 'loops'}
    assert len(by['correct']) >= 4 and all(ok for ok, _ in by['correct'].values())
    naive_failed = {c for c, (ok, _) in by['naive'].items() if not ok}
    assert 'no overflow' in naive_failed and 'value' not in naive_failed   # right on small inputs, wrong on large ones
    assert by['raises'] and not any(ok for ok, _ in by['raises'].values())
    assert any('ValueError' in m or 'I gave up' in m for _, m in by['raises'].values()), by['raises']
    assert by['loops'] == {'notebook ran': (False, 'stopped after 20 s (time limit)')}
    assert not list(tmp_path.glob('grades.*.jsonl'))                       # no per-student leftovers
