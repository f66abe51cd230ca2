"""tune.py: search spaces, the validation-only objective, the studies' bookkeeping, bad input, a trial
equal to the script's run, and the search-freeze-report path end to end on the test preset."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import torch
from conftest import REPO, need_slurm, run_in_process, run_script, submitted_jobs, wait_for_jobs

import tune
import utils
from evaluation.accuracy import Outputs
from evaluation.selection import SELECTION_KEYS, validation_gap, validation_metrics
from unlearn import ADDONS, METHODS, spec_name
from unlearn.search import Range, parse_range, space_of, suggest


# ------------------------------------------------------------------------------ spaces
def test_every_method_and_addon_space_names_its_fields():
    for m, mcls in METHODS.items():
        for a in ADDONS:
            spec = spec_name(m, a)
            if mcls.kind == "retrain":
                with pytest.raises(ValueError, match="nothing to tune"):
                    space_of(spec)
                continue
            space = space_of(spec)
            assert ("lr" in space) == (mcls.kind == "loop"), spec
    ga = space_of("GA+VarGrad")
    assert ga["lr"] == Range(1e-6, 1e-2, log=True)  # four decades around GA's published 1e-4
    assert ga["epochs"] == Range(1, 10, integer=True) and {"beta", "quantile"} <= set(ga)
    assert set(space_of("FT")) == {"lr", "epochs"}  # same shape: every loop method has both
    assert set(space_of("SSD")) == {"alpha", "dampening"}  # one-shot: its own ranges only


def test_ranges_parse_and_bad_ones_are_refused():
    assert parse_range("lr=1e-4:1e-1:log") == ("lr", Range(1e-4, 0.1, log=True))
    assert parse_range("epochs=1:8") == ("epochs", Range(1, 8, integer=True))
    for bad, msg in (("lr=0.1:0.01", "empty or inverted"), ("lr=0:1:log", "LOW > 0"), ("lr=1", "NAME=LOW:HIGH"),
                     ("lr=a:b", "numbers"), ("lr=1:1", "empty or inverted")):
        with pytest.raises(ValueError, match=msg):
            parse_range(bad)
    with pytest.raises(ValueError, match="no hyper-parameter 'alpha'"):
        space_of("GA", {"alpha": Range(0.1, 1)})


def test_suggest_keeps_whole_numbers_whole_and_inside_the_range():
    space = space_of("SCRUB")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), space)
        assert isinstance(values["epochs"], int) and isinstance(values["msteps"], int)
        for k, r in space.items():
            assert r.low <= values[k] <= r.high, k


# --------------------------------------------------------------------------- objective
def _outputs(seed=0, forgotten=None):
    g = torch.Generator().manual_seed(seed)
    def part(n):
        return torch.randn(n, 10, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)
    (f, yf), (r, yr), (t, yt), (v, yv) = part(30), part(200), part(80), part(60)
    return Outputs(f, r, t, v, yf, yr, yt, yv, forgotten)


def test_the_objective_reads_no_test_sample_and_is_zero_at_the_ideal():
    out = _outputs()
    m = validation_metrics(out, seed=1)
    assert set(m) == set(SELECTION_KEYS) and validation_gap(m, m) == 0.0
    scrambled = Outputs(out.forget, out.retain, torch.full_like(out.test, float("nan")), out.val, out.y_forget,
                        out.y_retain, torch.zeros_like(out.y_test), out.y_val)
    assert validation_metrics(scrambled, seed=1) == m  # the test set changes nothing
    moved_val = Outputs(out.forget, out.retain, out.test, -out.val, out.y_forget, out.y_retain, out.y_test, out.y_val)
    assert validation_metrics(moved_val, seed=1)["VA"] != m["VA"]
    assert validation_gap({**m, "UA": m["UA"] + 8}, m) == 2.0  # the mean of four absolute gaps


# ----------------------------------------------------------------------------- studies
def test_a_trial_left_running_is_queued_again_not_lost(tmp_path):
    storage = tune.make_storage(None, tmp_path)
    setting = {"method": "GA"}
    study = tune.open_study(storage, "s", setting, pilot_seed=0)
    trial = study.ask()
    params = suggest(trial, space_of("GA"))  # the process stops here, the trial stays RUNNING
    study = tune.open_study(tune.make_storage(None, tmp_path), "s", setting, pilot_seed=0)
    assert tune.recover_stale(study) == 1
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "WAITING"]
    again = study.ask()
    assert suggest(again, space_of("GA")) == params  # the same point, run next
    with pytest.raises(utils.UserError, match="started for another setting: method 'GA' \\(now 'FT'\\)"):
        tune.open_study(storage, "s", {"method": "FT"}, pilot_seed=0)


@pytest.mark.parametrize("flags, message", [
    (["--pilot_seed", "1"], "--pilot_seed 1 is also a reporting seed"),
    (["--methods", "GA+Nope"], "--methods GA+Nope: unknown add-on"),
    (["--methods", "retrain"], "nothing to tune"),
    (["--range", "lr=0.1:0.01"], "empty or inverted"),
    (["--range", "kd_T=1:2"], "--range kd_T: no method of this run searches it"),
    (["--trials", "0"], "--trials must be at least 1"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, flags, message):
    out = tmp_path / "t"
    proc = run_in_process("tune.py", "--preset", "digits-tune-test", "--out", str(out), *flags, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_ctrl_c_says_what_is_kept_and_the_command_that_continues(tmp_path, monkeypatch):
    import signal

    from experiments import sweep

    def interrupted(*a, **k):
        raise utils.Interrupted(signal.SIGINT)

    monkeypatch.setattr(sweep, "run_local", interrupted)  # Ctrl-C while the pilot's models train
    out = tmp_path / "t"
    proc = run_in_process("tune.py", "--preset", "digits-tune-test", "--out", str(out), check=False)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("interrupted by SIGINT; the finished trials are kept in ")
    assert line.endswith(f"tune.py --preset digits-tune-test --out {out}") and "Continue with: python " in line
    assert (out / "study.db").is_file() or any(out.glob("*.db")) or any(out.glob("*.journal"))


def test_a_study_of_another_setting_stops_the_run_and_keeps_its_trials(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    storage = tune.make_storage(None, out)
    other = tune.open_study(storage, "class 3 | GA", {"trials": 99}, pilot_seed=2)
    other.enqueue_trial({"lr": 1e-3, "epochs": 2})
    proc = run_in_process("tune.py", "--preset", "digits-tune-test", "--out", str(out), check=False)
    assert proc.returncode == 2 and "started for another setting" in proc.stderr and "trials 99" in proc.stderr
    assert len(optuna.load_study(study_name="class 3 | GA", storage=storage).trials) == 1
    assert not (out / "checkpoints").exists()  # stopped before training anything


# ------------------------------------------------------------------ trial == script run
@pytest.fixture(scope="module")
def pilot_models(tmp_path_factory):
    save = tmp_path_factory.mktemp("pilot")
    common = ["--dataset", "digits", "--epochs", "2", "--save_dir", str(save), "--seed", "4", "--quiet",
              "--class_to_replace", "3"]
    run_in_process("main_baseline.py", *common)
    run_in_process("main_ideal.py", *common)
    return save, common


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares a CUDA script run with a CPU trial")
def test_a_trial_is_the_script_run_with_its_values(pilot_models):
    save, common = pilot_models
    grid = tune.benchmark.PRESETS["digits-tune-test"]
    grid = tune.dataclasses.replace(grid, epochs={"digits": 2})
    pilot = tune.Pilot(grid, 3, None, 4, None, 1.0, save_dir=save)
    values = {"lr": 0.004, "epochs": 2, "beta": 0.8, "quantile": 0.6}
    model = tune.run_trial(pilot, "GA+VarGrad", values)
    run_in_process("main_forget.py", *common, "--unlearn", "GA+VarGrad", "--unlearn_lr", "0.004",
                   "--unlearn_epochs", "2", "--beta", "0.8", "--quantile", "0.6")
    (path,) = (save / "unlearned").glob("*.pth.tar")
    script = utils.load_checkpoint(path)["state_dict"]
    mine = model.state_dict()
    assert script.keys() == mine.keys()
    assert all(torch.equal(script[k], mine[k]) for k in mine)
    other = tune.run_trial(pilot, "GA+VarGrad", {**values, "quantile": 0.9}).state_dict()
    assert not all(torch.equal(other[k], mine[k]) for k in mine)  # the values reach the run
    assert pilot.ideal["UA"] > 90 and validation_gap(pilot.metrics(model), pilot.ideal) > 0


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_search_freeze_report_and_rerun(tmp_path):
    out = tmp_path / "t"
    proc = run_script("tune.py", "--preset", "digits-tune-test", "--out", str(out), "--quiet")
    doc = json.loads((out / "tuned.json").read_text())
    assert doc["pilot_seed"] == 2 and doc["reporting_seeds"] == [1] and doc["budget"]["trials"] == 3
    methods = doc["scenarios"]["class 3"]["methods"]
    assert set(methods) == {"GA", "GA+VarGrad"}
    for entry in methods.values():
        assert sum(entry["trials"].values()) >= 3 and set(entry["best"]) >= {"lr", "epochs"}
        assert entry["objective"] >= 0
    assert list((out / "plots").glob("*history.png"))
    table = (out / "table_class_3.md").read_text()
    for row in ("| GA |", "| GA (tuned) |", "| GA+VarGrad |", "| GA+VarGrad (tuned) |", "Ideal (retrain)"):
        assert row in table, table
    assert "optuna-dashboard sqlite:///" in proc.stdout
    again = run_script("tune.py", "--preset", "digits-tune-test", "--out", str(out), "--quiet")
    stages = [line for line in again.stdout.splitlines() if " ran, " in line]
    assert stages and all(" 0 ran, " in line for line in stages), again.stdout
    study = optuna.load_study(study_name="class 3 | GA", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == sum(methods["GA"]["trials"].values())  # no trial repeated
    # the file reproduces the tuned rows without a search, and only for its own setting
    redo = run_script("benchmark.py", "--preset", "digits-tune-test", "--out", str(out), "--tuned",
                      str(out / "tuned.json"), "--quiet", "--report_only")
    assert "(tuned)" in (out / "table_class_3.md").read_text() and "4 runs summarised" in redo.stdout
    wrong = run_script("benchmark.py", "--preset", "digits-tuned", "--out", str(tmp_path / "w"), "--tuned",
                       str(out / "tuned.json"), "--report_only", check=False)
    assert wrong.returncode == 2 and "was made for another setting" in wrong.stderr


@pytest.mark.slow
def test_the_dashboard_serves_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="class 3 | GA", storage=storage)
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-1, log=True), n_trials=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the console script `optuna-dashboard` of the docs, run by this interpreter
    proc = subprocess.Popen([sys.executable, "-c", "from optuna_dashboard._cli import main; main()", storage,
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("optuna-dashboard did not answer within 20 s")
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["class 3 | GA"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------- Slurm
def test_slurm_mode_writes_the_pilot_array_and_a_worker_array_on_a_journal(tmp_path):
    out = tmp_path / "t"
    proc = run_in_process("tune.py", "--preset", "digits-tune-test", "--out", str(out), "--slurm", "--dry_run",
                          "--workers", "3", "--cpus", "1", "--time", "00:30:00", "--trials", "2")
    search = (out / "search.sbatch").read_text()
    assert "#SBATCH --array=1-3%8" in search and "#SBATCH --cpus-per-task=1" in search
    assert "#SBATCH --time=00:30:00" in search and "export OMP_NUM_THREADS=1" in search
    journal = f"journal:{(out / 'study.journal').resolve()}"
    assert f"--storage {journal}" in search and search.rstrip().endswith("--quiet --worker")
    assert "--trials 2" in search and f"--out {out.resolve()}" in search
    assert "--line \"$SLURM_ARRAY_TASK_ID\"" in (out / "pilot_base_params.sbatch").read_text()
    assert len((out / "pilot_base_params.txt").read_text().splitlines()) == 2  # the pilot's original and ideal
    assert not (out / "checkpoints").exists()  # nothing trained here
    # the studies are in the journal, and the command that freezes and reports reads them
    follow = next(line for line in proc.stdout.splitlines() if line.startswith("when the workers are done"))
    assert f"--storage {journal}" in follow and "--worker" not in follow
    names = optuna.get_all_study_names(tune.make_storage(journal, out))
    assert sorted(names) == ["class 3 | GA", "class 3 | GA+VarGrad"]


@pytest.mark.slow
def test_slurm_workers_fill_one_study_together_then_it_freezes_here(tmp_path):
    need_slurm()
    out = tmp_path / "t"
    proc = run_script("tune.py", "--preset", "digits-tune-test", "--out", str(out), "--slurm", "--workers", "2",
                      "--cpus", "1", "--time", "00:20:00", "--trials", "3", "--no_mlflow", "--methods", "GA")
    jobs = submitted_jobs(proc.stdout)
    assert len(jobs) == 2
    wait_for_jobs(jobs, limit=900)
    journal = f"journal:{(out / 'study.journal').resolve()}"
    study = optuna.load_study(study_name="class 3 | GA", storage=tune.make_storage(journal, out))
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    logs = "\n".join(p.read_text()[-400:] for p in (out / "logs").rglob("*.log"))
    assert [t.number for t in done] == [0, 1, 2], logs  # two workers, exactly the budget's first three trials
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.number > 2)  # a racer stood down
    assert not any(t.state.name == "RUNNING" for t in study.trials)
    follow = run_script("tune.py", "--preset", "digits-tune-test", "--out", str(out), "--storage", journal,
                        "--trials", "3", "--no_mlflow", "--methods", "GA", "--search_only", "--quiet")
    assert "search:" in follow.stdout
    assert json.loads((out / "tuned.json").read_text())["scenarios"]["class 3"]["methods"]["GA"]["best"]


def test_workers_racing_past_the_budget_run_exactly_its_first_trials(tmp_path):
    storage = tune.make_storage(None, tmp_path)
    study = tune.open_study(storage, "s", {"method": "GA"}, pilot_seed=0)
    first = [study.ask() for _ in range(3)]  # three workers each started a trial
    late = study.ask()  # a fourth started one before any finished
    assert [tune.surplus(t, 3) for t in first] == [False, False, False] and tune.surplus(late, 3)
    study.tell(first[1], state=optuna.trial.TrialState.FAIL)  # a failed trial frees its place
    assert not tune.surplus(late, 3)


@pytest.mark.slow
def test_the_trial_speed_benchmark_times_the_same_trials_both_ways():
    from benchmarks import trial_speed

    a, b = trial_speed.draws("GA+VarGrad", 3, 2), trial_speed.draws("GA+VarGrad", 3, 2)
    assert a == b and len({tuple(sorted(v.items())) for v in a}) == 3  # seeded, distinct
    assert trial_speed.script_flags({"lr": 0.01, "epochs": 2, "beta": 0.5}) == [
        "--unlearn_lr", "0.01", "--unlearn_epochs", "2", "--beta", "0.5"]
    found = trial_speed.main(["--trials", "1"])
    assert found["in_process_s"] > 0 and found["ratio"] == found["per_process_s"] / found["in_process_s"]
