"""The McMahan et al. 2017 sweep: cells, rate search, resume, caps and the table."""

import dataclasses
import doctest
import importlib
import shutil
import sys
import tarfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import benchmarks.mcmahan2017.sweep as sweep_module
from benchmarks.mcmahan2017 import cells as grid
from benchmarks.mcmahan2017.cells import Cell
from benchmarks.mcmahan2017.curves import plot_all
from benchmarks.mcmahan2017.ladder import ladder
from benchmarks.mcmahan2017.results import (
    ACCURACY_BY_ROUND,
    best,
    cell_fields,
    curve_of,
    load_runs,
    logged_accuracies,
    pack,
    record_run,
    run_key,
    save_runs,
    store_curves,
)
from benchmarks.mcmahan2017.sweep import (
    Settings,
    next_step,
    rerun_best,
    run_one,
    sweep,
)
from benchmarks.mcmahan2017.table import TIMES, model_table, rates_text, rounds_text
from fedloom.experiments import MetricsLog, config_from_dict
from fedloom.experiments._files import locked_directory


def test_every_paper_cell_becomes_a_valid_config():
    rows = grid.paper()["table2_cnn"]["rows"]
    cells = grid.all_cells()
    assert len(cells) == 2 * 2 * len(rows) == 36
    for cell in cells:
        for dataset in grid.DATASETS:
            target = grid.TARGETS[(dataset, cell.model, cell.partition)]
            data = grid.make_config(
                cell, 0.1, dataset=dataset, target=target, max_rounds=7
            )
            config = config_from_dict(data)
            assert config.algorithm.name == cell.algorithm
            assert config.algorithm.local_epochs == cell.local_epochs
            assert config.algorithm.batch_size == cell.batch_size
            assert config.algorithm.cohort_size(config.data.num_clients) == 10
            assert config.data.partition == cell.partition
            assert (config.rounds, config.target_accuracy) == (7, target)
    for row in rows:  # u = E n / (K B) as the paper prints it
        cell = Cell("cnn", "iid", row["algorithm"], row["E"], row["B"])
        assert cell.u == row["u"]
        assert grid.paper_rounds(cell) == row["iid"]
    assert grid.paper_rounds(Cell("cnn", "shards", "fedavg", 20, 10)) == 173
    assert grid.paper_rounds(Cell("2nn", "iid", "fedsgd", 1, None)) == 1474
    assert grid.paper_rounds(Cell("2nn", "iid", "fedavg", 5, 10)) is None


def _run(rounds, accuracy=0.9):
    return {"rounds_to_target": rounds, "best_accuracy": accuracy}


def test_the_rate_search_brackets_then_extends_towards_the_best():
    cell = Cell("2nn", "iid", "fedsgd", 1, None)  # starts at step -2 (0.215)
    assert next_step(cell, {}) == -2
    assert next_step(cell, {-2: _run(40)}) == -3
    assert next_step(cell, {-2: _run(40), -3: _run(50)}) == -1
    inside = {-3: _run(50), -2: _run(40), -1: _run(None, 0.8)}
    assert next_step(cell, inside) is None
    at_edge = {-3: _run(50), -2: _run(40), -1: _run(30)}
    assert next_step(cell, at_edge) == 0
    none_reached = {-3: _run(None, 0.7), -2: _run(None, 0.6), -1: _run(None, 0.5)}
    assert next_step(cell, none_reached) == -4
    full = {k: _run(60 + k) for k in range(-6, 0)}  # best at the edge, 6 rates
    assert next_step(cell, full) is None


def _settings(tmp_path, target, cap):
    return Settings(
        dataset="digits",
        results_path=tmp_path / "results.json",
        runs_dir=tmp_path / "runs",
        targets={("digits", "2nn", p): target for p in grid.PARTITIONS},
        max_rounds={
            ("2nn", p, a): cap for p in grid.PARTITIONS for a in ("fedsgd", "fedavg")
        },
        num_clients=10,
    )


def test_a_rerun_skips_finished_runs_and_resumes_a_stopped_one(tmp_path):
    settings = _settings(tmp_path, target=0.999, cap=2)  # unreachable in 2 rounds
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    made = sweep(settings, [cell], report=lambda line: None)
    runs = load_runs(settings.results_path)
    assert made == len(runs) >= 3  # the start rate, its neighbours, and on
    assert {0.0464, 0.1, 0.215} <= {r["learning_rate"] for r in runs.values()}
    for run in runs.values():  # missed: "> 2" in the table
        assert run["rounds_to_target"] is None
        assert run["rounds_run"] == run["max_rounds"] == 2
        assert (tmp_path / "runs" / run["run_dir"] / "metrics.jsonl").exists()
    before = settings.results_path.read_text()
    assert sweep(settings, [cell], report=lambda line: None) == 0
    assert settings.results_path.read_text() == before
    # a sweep killed after a run but before it was recorded: the rerun makes
    # that run again, from the run directory it left
    key = run_key("digits", cell, 0.215, 0.999)
    lost = runs.pop(key)
    save_runs(settings.results_path, runs)
    assert sweep(settings, [cell], report=lambda line: None) == 1
    again = load_runs(settings.results_path)[key]
    for field in ("rounds_run", "best_accuracy", "final_accuracy", "seconds"):
        assert again[field] == lost[field]
    # what a device call sends back: metrics of every run, no finished checkpoint
    stored = load_runs(settings.results_path)
    with tarfile.open(pack(stored, settings.runs_dir, tmp_path / "out")) as tar:
        names = tar.getnames()
    assert f"{lost['run_dir']}/metrics.jsonl" in names
    assert not any("checkpoint" in name for name in names)
    spent = dataclasses.replace(settings, time_budget=0.0)
    other = Cell("2nn", "iid", "fedavg", 5, 10)
    assert sweep(spent, [other], report=lambda line: None) == 0


def test_a_run_past_its_deadline_stops_and_the_next_sweep_finishes_it(tmp_path):
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    whole = run_one(_settings(tmp_path / "a", 0.999, 14), cell, 0.1, 14, None)
    settings = _settings(tmp_path / "b", 0.999, 14)
    # a deadline already past: the run stops after its first round
    assert run_one(settings, cell, 0.1, 14, deadline=0.0) is None
    log = tmp_path / "b" / "runs" / "digits" / cell.name / "lr0.1_t0.999"
    assert len((log / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = run_one(settings, cell, 0.1, 14, None)
    assert whole is not None and resumed is not None
    for field in ("rounds_run", "best_accuracy", "final_accuracy"):
        assert resumed[field] == whole[field]


def test_a_stopped_run_resumes_with_the_chunk_size_measured_since(tmp_path):
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    plain = dataclasses.replace(  # 3 clients a round: a chunk of 1 changes the kernels
        _settings(tmp_path, 0.999, 4), runtime="vectorized", num_clients=30
    )
    whole = run_one(plain, cell, 0.1, 4, None)
    stopped = dataclasses.replace(plain, runs_dir=tmp_path / "other")
    assert run_one(stopped, cell, 0.1, 4, deadline=0.0) is None
    chunked = dataclasses.replace(stopped, chunk_sizes={("fedavg", 10): 1})
    resumed = run_one(chunked, cell, 0.1, 4, None)
    assert whole is not None and resumed is not None
    assert (whole["chunk_size"], resumed["chunk_size"]) == (None, 1)
    assert resumed["rounds_run"] == 4
    # the same rounds by other kernels: at most an example's worth of difference
    assert resumed["final_accuracy"] == pytest.approx(
        whole["final_accuracy"], abs=0.004
    )
    local = dataclasses.replace(chunked, runtime="local")  # no chunks to set there
    assert local.chunk_size(cell) is None and chunked.chunk_size(cell) == 1


def test_fastest_chunk_sizes_read_from_the_probe_report():
    result = doctest.testmod(importlib.import_module("benchmarks.chunk_size"))
    assert result.failed == 0 and result.attempted > 0


def test_a_diverging_rate_is_recorded_as_such_and_marked_in_the_table(tmp_path):
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    run = run_one(_settings(tmp_path, 0.9, 5), cell, 1000.0, 5, None)
    assert run is not None  # the sweep goes on to the next rate
    assert run["diverged"] and run["rounds_to_target"] is None
    assert run["rounds_run"] < 5
    good = dict(run, learning_rate=0.1, diverged=False, best_accuracy=0.5)
    rates = rates_text([run, good], good)
    assert rates == "**0.1**, 1000†"
    # ended early, it is no cell's best while a run that went the distance
    # missed the target too, however accurate it was before it diverged
    full = dict(good, rounds_run=5)
    assert best([dict(run, best_accuracy=0.99), full]) is full
    assert rounds_text(run) == f"> {run['rounds_run']}†"  # not "> 5"


def test_a_stopped_run_started_elsewhere_is_skipped_not_crashed_on(tmp_path):
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    on_gpu = dataclasses.replace(_settings(tmp_path, 0.999, 4), runtime="vectorized")
    assert run_one(on_gpu, cell, 0.1, 4, deadline=0.0) is None  # stopped
    lines: list[str] = []
    here = _settings(tmp_path, 0.999, 4)  # the local runtime
    assert sweep(here, [cell], report=lines.append) == 0
    assert lines[-1].startswith(f"skipping {cell.name}: ")
    assert "runtime 'vectorized'" in lines[-1]
    assert sweep(on_gpu, [cell], report=lambda line: None) >= 3  # resumes there


def test_a_run_stalled_at_chance_is_ended_and_marked(tmp_path, monkeypatch):
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    monkeypatch.setattr(sweep_module, "STALL_ROUNDS", 3)
    monkeypatch.setattr(sweep_module, "STALL_ACCURACY", 1.0)  # every run "stalls"
    run = run_one(_settings(tmp_path, 0.999, 10), cell, 0.1, 10, None)
    assert run is not None and run["stalled"] and not run["diverged"]
    assert run["rounds_run"] == 3 and run["rounds_to_target"] is None
    good = dict(run, learning_rate=0.0464, stalled=False, best_accuracy=0.95)
    assert rates_text([run, good], good) == "**0.0464**, 0.1‡"


def test_runs_past_the_best_rate_stop_at_its_rounds(tmp_path):
    settings = _settings(tmp_path, target=0.3, cap=20)
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    sweep(settings, [cell], report=lambda line: None)
    runs = {r["learning_rate"]: r for r in load_runs(settings.results_path).values()}
    first = runs[0.1]["rounds_to_target"]  # the start rate runs first, to the cap
    assert runs[0.1]["max_rounds"] == 20 and first is not None and first < 20
    assert runs[0.0464]["max_rounds"] == first  # the next stops at its rounds
    second = runs[0.0464]["rounds_to_target"] or first
    assert runs[0.215]["max_rounds"] == min(first, second)


def _stored(cell, lr, rounds, cap, accuracy):
    key = run_key("fashion_mnist", cell, lr, 0.85)
    return key, {
        "dataset": "fashion_mnist",
        **cell_fields(cell),
        "learning_rate": lr,
        "target": 0.85,
        "max_rounds": cap,
        "rounds_to_target": rounds,
        "best_accuracy": accuracy,
        "seconds": 12.5,
        "device": "cpu",
    }


@pytest.mark.parametrize(
    ("fedsgd_rounds", "expected"), [(500, f"(25.0{TIMES})"), (None, f"(≥ 75.0{TIMES})")]
)
def test_the_table_puts_paper_and_fedloom_side_by_side(fedsgd_rounds, expected):
    fedsgd = Cell("2nn", "iid", "fedsgd", 1, None)
    fedavg = Cell("2nn", "iid", "fedavg", 1, 10)
    worse = Cell("2nn", "iid", "fedavg", 5, None)
    runs = dict(
        [
            _stored(fedsgd, 0.215, fedsgd_rounds, 1500, 0.86),
            _stored(fedavg, 0.1, 20, 500, 0.851),
            _stored(fedavg, 0.215, None, 20, 0.84),
            _stored(worse, 0.464, None, 500, 0.83),
        ]
    )
    lines = model_table("2nn", {"fashion_mnist": runs})
    row = next(line for line in lines if "| IID | FedAvg | 1 | 10 | 60 |" in line)
    cells = [part.strip() for part in row.split("|")[1:-1]]
    assert cells[5] == f"87 (16.9{TIMES})"  # the paper: Table 1, 1474 / 87
    assert cells[6] == "not run here"  # no MNIST runs
    assert cells[7] == f"20 {expected}"
    assert cells[8] == "yes"  # FedAvg beats FedSGD, as in the paper
    assert cells[9] == "**0.1**, 0.215"
    assert cells[10:] == ["0.8510", "12.5", "cpu"]
    row = next(line for line in lines if "| IID | FedAvg | 5 | ∞ | 5 |" in line)
    assert "| > 500 |" in row and "| unknown |" in row
    assert any("| IID | FedSGD | 1 | ∞ | 1 | 1474 |" in line for line in lines)


@pytest.mark.parametrize("module", ["cells", "results", "seeds", "sweep", "table"])
def test_docstring_examples(module):
    imported = importlib.import_module(f"benchmarks.mcmahan2017.{module}")
    result = doctest.testmod(imported, report=True)
    assert result.failed == 0 and result.attempted > 0


def test_recording_a_run_keeps_what_another_sweep_recorded_meanwhile(tmp_path):
    path = tmp_path / "results" / "digits.json"
    save_runs(path, {"a": {"n": 1}})  # loaded by this sweep long ago, then:
    record_run(path, "b", {"n": 2})  # another sweep's run, recorded since
    record_run(path, "c", {"n": 3})
    assert load_runs(path) == {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}
    with locked_directory(path.parent):  # a sweep recording: the next one waits
        waiting = threading.Thread(target=record_run, args=(path, "d", {"n": 4}))
        waiting.start()
        waiting.join(timeout=0.3)
        assert waiting.is_alive() and "d" not in load_runs(path)
    waiting.join(timeout=10)
    assert load_runs(path)["d"] == {"n": 4} and len(load_runs(path)) == 4
    assert [p.name for p in path.parent.iterdir()] == ["digits.json"]


def _without_curves(path):
    runs = load_runs(path)
    kept = {key: run.pop(ACCURACY_BY_ROUND) for key, run in runs.items()}
    save_runs(path, runs)
    return kept


def test_curves_are_drawn_from_the_results_file_or_runs_made_again(tmp_path):
    settings = _settings(tmp_path, target=0.3, cap=20)
    cell = Cell("2nn", "iid", "fedavg", 1, 10)
    sweep(settings, [cell], report=lambda line: None)
    path, runs_dir = settings.results_path, settings.runs_dir
    runs = load_runs(path)
    chosen = best(list(runs.values()))
    assert chosen is not None and chosen["rounds_to_target"] is not None
    curve = chosen[ACCURACY_BY_ROUND]
    assert len(curve) == chosen["rounds_to_target"] and curve[-1] >= 0.3
    assert curve_of(chosen, runs_dir) == (list(range(1, len(curve) + 1)), curve)
    # drawn from the file alone, with no run directory here
    shutil.rmtree(runs_dir)
    figures = tmp_path / "figures"
    targets = {("digits", m, p): 0.3 for m in grid.MODELS for p in grid.PARTITIONS}
    lines = plot_all("digits", runs, runs_dir, targets, figures)
    assert lines == [str(figures / "digits_2nn_iid.png")]
    assert (figures / "digits_2nn_iid.png").stat().st_size > 0
    # a run recorded before the file kept curves: taken from its directory ...
    again = dataclasses.replace(settings, results_path=tmp_path / "again.json")
    sweep(again, [cell], report=lambda line: None)
    kept = _without_curves(path)
    assert sorted(store_curves(path, runs_dir)) == sorted(kept)
    assert {k: r[ACCURACY_BY_ROUND] for k, r in load_runs(path).items()} == kept
    # ... and without one, the figure is left as it was until the run is made again
    shutil.rmtree(runs_dir)
    _without_curves(path)
    (figures / "digits_2nn_iid.png").write_bytes(b"the figure in git")
    lines = plot_all("digits", load_runs(path), runs_dir, targets, figures)
    assert len(lines) == 1 and "left as it was" in lines[0] and cell.name in lines[0]
    assert (figures / "digits_2nn_iid.png").read_bytes() == b"the figure in git"
    # not on another runtime (or device type) than the run it replaces
    lines: list[str] = []
    vectorized = dataclasses.replace(settings, runtime="vectorized")
    assert rerun_best(vectorized, [cell], report=lines.append) == 0
    assert lines == [
        f"skipping {cell.name}: its best run was made on cpu, runtime local; "
        "rerun it there"
    ]
    # a rerun stopped by a time budget: its checkpoint travels, and it resumes
    assert run_one(settings, cell, chosen["learning_rate"], 20, deadline=0.0) is None
    with tarfile.open(pack(load_runs(path), runs_dir, tmp_path / "out")) as tar:
        assert f"{chosen['run_dir']}/checkpoint" in tar.getnames()
    reports: list[str] = []
    assert rerun_best(settings, [cell], report=reports.append) == 1
    rerun = best(list(load_runs(path).values()))
    assert rerun is not None and rerun["learning_rate"] == chosen["learning_rate"]
    assert rerun[ACCURACY_BY_ROUND] == curve  # the same seed: the same run
    assert rerun["rerun_of"]["rounds_to_target"] == chosen["rounds_to_target"]
    assert f"was {chosen['rounds_to_target']} rounds" in reports[0]
    assert rerun_best(settings, [cell], report=reports.append) == 0  # has its curve
    # a sweep that makes the rerun's run again (here: as if cut short) keeps what
    # its first run measured
    key = run_key("digits", cell, chosen["learning_rate"], 0.3)
    runs = load_runs(path)
    runs[key].update(rounds_to_target=None, max_rounds=1, rounds_run=1)
    save_runs(path, runs)
    assert sweep(settings, [cell], report=lambda line: None) == 1
    assert load_runs(path)[key]["rerun_of"] == rerun["rerun_of"]
    lines = plot_all("digits", load_runs(path), runs_dir, targets, figures)
    assert lines == [str(figures / "digits_2nn_iid.png")]


def test_the_ladder_reads_rounds_to_lower_thresholds_from_stored_curves():
    fedsgd = Cell("cnn", "shards", "fedsgd", 1, None)
    fedavg = Cell("cnn", "shards", "fedavg", 20, None)
    runs = dict([_stored(fedsgd, 0.464, 4, 9, 0.86), _stored(fedavg, 0.1, 2, 9, 0.85)])
    runs[run_key("fashion_mnist", fedsgd, 0.464, 0.85)][ACCURACY_BY_ROUND] = [
        0.5,
        0.7,
        None,
        0.86,
    ]
    runs[run_key("fashion_mnist", fedavg, 0.1, 0.85)][ACCURACY_BY_ROUND] = [0.75, 0.85]
    rows = ladder(runs, "fashion_mnist", "cnn", "shards", [0.7, 0.8, 0.85])
    by_cell = {row["cell"]: row for row in rows}
    assert by_cell[fedsgd.name]["rounds"] == [2, 4, 4]
    assert by_cell[fedavg.name]["rounds"] == [1, 2, 2]
    assert by_cell[fedavg.name]["speedup"] == [2.0, 2.0, 2.0]
    assert by_cell["cnn/shards/fedavg_E1_B10"]["rounds"] == [None, None, None]


def test_a_log_that_is_not_the_recorded_run_gives_no_curve(tmp_path):
    run = {
        "run_dir": "cell/lr0.1",
        "target": 0.3,
        "rounds_run": 3,
        "rounds_to_target": 3,
        "best_accuracy": 0.31,
    }
    log = MetricsLog(tmp_path / "cell" / "lr0.1" / "metrics.jsonl")
    for round, accuracy in enumerate([0.1, 0.2, 0.31], start=1):
        log.append({"round": round, "test_accuracy": accuracy})
    assert logged_accuracies(run, tmp_path) == [0.1, 0.2, 0.31]
    # a slower rerun under way in the same directory: past the recorded rounds,
    # but it reached the target later, and its best differs
    (tmp_path / "cell" / "lr0.1" / "metrics.jsonl").unlink()
    for round, accuracy in enumerate([0.1, 0.2, 0.25, 0.35, 0.4], start=1):
        log.append({"round": round, "test_accuracy": accuracy})
    assert logged_accuracies(run, tmp_path) is None
    assert (
        logged_accuracies(dict(run, rounds_run=5, best_accuracy=0.4), tmp_path) is None
    )
    assert logged_accuracies(dict(run, rounds_run=6), tmp_path) is None  # too short


def test_results_keep_number_lists_on_one_line_and_read_back(tmp_path):
    runs = {
        "a": {
            ACCURACY_BY_ROUND: [0.1, None, -2.5e-07, 1e20, 0.85],
            "nested": [[1, 2], [3.5, None]],
            "text": "[1,\n 2]",
            "mixed": [1, "x", None],
            "empty": [],
        }
    }
    save_runs(tmp_path / "r.json", runs)
    text = (tmp_path / "r.json").read_text()
    assert "[0.1, null, -2.5e-07, 1e+20, 0.85]" in text
    assert load_runs(tmp_path / "r.json") == runs
