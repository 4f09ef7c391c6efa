"""dst-report and the report that ends a sweep: grouping over seeds checked against the runs' own
summaries, failed/unfinished/unreadable runs listed by name, bad input in one sentence."""

import csv
import json
import pathlib
import shutil
import statistics
import subprocess
import sys

import matplotlib.image
import pytest
import yaml
from cli_helpers import ENV
from cli_helpers import dst_train
from idx_data import write_dataset

from dst.app.report_cli import main as report_main
from dst.report import collect_runs
from dst.report import group_rows
from dst.report import write_report
from dst.report.figures import accuracy_vs_sparsity_data
from dst.report.figures import accuracy_vs_sparsity_figure
from dst.report.figures import curve_figure_data
from dst.report.figures import read_curves_csv
from dst.report.figures import read_report_csv
from dst.report.figures import save
from dst.report.figures import training_curves_data
from dst.report.figures import training_curves_figure
from dst.report.write import write_csv

REPORT = [sys.executable, "-m", "dst.app.report_cli"]


def fake_run(folder: pathlib.Path, algorithm, sparsity, seed, acc, status="finished", steps=(10, 20)):
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    cfg = {"sparsity": {"algorithm": algorithm, "sparsity": sparsity, "distribution": "erk"},
           "model": {"name": "lenet300"}, "dataset": {"name": "fashion_mnist"}, "trainer": {"seed": seed}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = [{"step": s, "test/accuracy": acc * s / steps[-1], "itop_rate": 0.1 * s} for s in steps]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        summary = {**records[-1], "status": status, "best/test_accuracy": acc, "flops/train_relative": 0.2}
        if status == "failed":
            summary["error"] = "NonFiniteLossError: train/loss became nan"
        (folder / "summary.json").write_text(json.dumps(summary))


def test_groups_average_over_seeds_and_leave_out_what_did_not_finish(tmp_path):
    for seed, acc in enumerate((0.80, 0.84, 0.90)):
        fake_run(tmp_path / f"rigl_{seed}", "rigl", 0.9, seed, acc)
    fake_run(tmp_path / "set_0", "set", 0.9, 0, 0.70)
    fake_run(tmp_path / "rigl_failed", "rigl", 0.9, 3, 0.10, status="failed")
    fake_run(tmp_path / "rigl_killed", "rigl", 0.9, 4, 0.10, status=None)
    runs = collect_runs([tmp_path])
    assert {r.path.name: r.status for r in runs} == {
        "rigl_0": "finished", "rigl_1": "finished", "rigl_2": "finished", "set_0": "finished",
        "rigl_failed": "failed", "rigl_killed": "unfinished"}
    rows = {r["algorithm"]: r for r in group_rows(runs)}
    assert rows["rigl"]["runs"] == 3 and rows["rigl"]["seeds"] == [0, 1, 2]
    assert rows["rigl"]["test_accuracy_mean"] == pytest.approx(statistics.mean((0.80, 0.84, 0.90)))
    assert rows["rigl"]["test_accuracy_std"] == pytest.approx(statistics.stdev((0.80, 0.84, 0.90)))
    assert rows["set"]["runs"] == 1 and rows["set"]["test_accuracy_std"] == 0.0
    path, _ = write_report(runs, tmp_path / "out", root=tmp_path)
    text = path.read_text()
    assert "| rigl | 0.9 | erk | lenet300 | fashion_mnist | 84.67 ± 5.03 |" in text
    assert "`rigl_failed`: failed: NonFiniteLossError" in text and "`rigl_killed`: unfinished" in text
    table = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert [r["algorithm"] for r in table] == ["rigl", "set"] and table[0]["seeds"] == "0 1 2"
    for png in ("accuracy_vs_sparsity.png", "test_accuracy_over_training.png", "itop_over_training.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def _set_config(folder, **values):
    path = folder / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))


def test_runs_that_differ_in_a_hyperparameter_are_not_averaged_as_seeds(tmp_path):
    # A sweep over backward_sparsity (or lr) must give one row per value, not one row whose "std"
    # mixes hyperparameters; values that only say how a run was carried out do not split a row.
    accs = {(0.8, 0): 0.10, (0.8, 1): 0.12, (0.9, 0): 0.86, (0.9, 1): 0.88}
    for (backward, seed), acc in accs.items():
        folder = tmp_path / f"topkast_{backward}_{seed}"
        fake_run(folder, "topkast", 0.98, seed, acc)
        _set_config(folder, **{"sparsity.backward_sparsity": backward, "optimizer.lr": 0.1,
                               "name": folder.name, "dataset.data_dir": f"/data/{seed}",
                               "logger.mode": ["offline", "disabled"][seed], "trainer.resume": bool(seed)})
    for seed in (0, 1):
        fake_run(tmp_path / f"set_{seed}", "set", 0.98, seed, 0.8)
        _set_config(tmp_path / f"set_{seed}", **{"optimizer.lr": 0.1 * (seed + 1)})
    rows = group_rows(collect_runs([tmp_path]))
    got = {(r["algorithm"], r["settings"]): (r["runs"], r["test_accuracy_mean"]) for r in rows}
    assert got == {("topkast", "sparsity.backward_sparsity=0.8"): (2, pytest.approx(0.11)),
                   ("topkast", "sparsity.backward_sparsity=0.9"): (2, pytest.approx(0.87)),
                   ("set", "optimizer.lr=0.1"): (1, pytest.approx(0.8)),
                   ("set", "optimizer.lr=0.2"): (1, pytest.approx(0.8))}
    path, _ = write_report(collect_runs([tmp_path]), tmp_path / "out", root=tmp_path)
    text = path.read_text()
    assert "| other settings |" in text
    assert "| topkast | 0.98 | erk | lenet300 | fashion_mnist | sparsity.backward_sparsity=0.9 | 87.00 ± 1.41 |" in text
    table = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert sorted(r["settings"] for r in table)[0] == "optimizer.lr=0.1"
    assert "Repeated seeds" not in text


def test_a_key_older_runs_lack_splits_nothing_and_repeated_seeds_are_flagged(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path / f"old_{seed}", "rigl", 0.9, seed, 0.80)
        fake_run(tmp_path / f"new_{seed}", "rigl", 0.9, seed, 0.82)
        _set_config(tmp_path / f"new_{seed}", **{"trainer.label_smoothing": 0.0})
    (row,) = group_rows(collect_runs([tmp_path]))
    assert row["settings"] == "" and row["runs"] == 4 and row["seeds"] == [0, 0, 1, 1]
    out = subprocess.run([*REPORT, str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert "repeated seeds (0 0 1 1)" in out.stderr
    assert "**Repeated seeds**" in (tmp_path / "report.md").read_text()


def test_dst_report_on_nothing_or_broken_files_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run([*REPORT, str(tmp_path / "empty")], capture_output=True, text=True, env=ENV)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: no runs below")
    assert len(out.stderr.strip().splitlines()) == 1
    fake_run(tmp_path / "runs" / "good", "rigl", 0.9, 0, 0.8)
    fake_run(tmp_path / "runs" / "bad", "rigl", 0.9, 1, 0.8)
    (tmp_path / "runs" / "bad" / "summary.json").write_text("{ truncated")
    out = subprocess.run([*REPORT, str(tmp_path / "runs")], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert "could not be read" in out.stderr and "bad" in out.stderr
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "`bad`: unreadable" in text and "| rigl | 0.9 |" in text and "| 1 |" in text


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


@pytest.mark.slow   # a real multi-process run (20-45 s): `make test-slow`, which .ci/run runs too
def test_a_real_sweep_with_a_failing_job_ends_in_the_report(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    out = dst_train("-m", "sparsity=static,rigl", "trainer.seed=0,1,-1", f"dataset.data_dir={data_dir}",
                    "trainer.epochs=1", "trainer.batch_size=64", "logger=none", f"hydra.sweep.dir={sweep}",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trainer.seed must be a non-negative integer" in out.stderr
    runs = {p.name: json.loads((p / "summary.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    failed = sorted(n for n, s in runs.items() if s["status"] == "failed")
    assert len(runs) == 6 and len(failed) == 2 and all("seed" in runs[n]["error"] for n in failed)
    text = (sweep / "report.md").read_text()
    for name in failed:
        assert f"`{name}`: failed: trainer.seed must be" in text
    rows = {r["algorithm"]: r for r in csv.DictReader((sweep / "report.csv").open())}
    finished = {}
    for name, summary in runs.items():
        if summary["status"] == "finished":
            algorithm = yaml.safe_load((sweep / name / ".hydra/config.yaml").read_text())["sparsity"]["algorithm"]
            finished.setdefault(algorithm, []).append(summary["test/accuracy"])
    for algorithm, accs in finished.items():          # the table against the runs' own summaries
        assert len(accs) == 2 and rows[algorithm]["runs"] == "2"
        assert float(rows[algorithm]["test_accuracy_mean"]) == pytest.approx(statistics.mean(accs))
        assert float(rows[algorithm]["test_accuracy_std"]) == pytest.approx(statistics.stdev(accs))
    assert "did not finish" in out.stdout
    # dst-report over the same folder writes the same table.
    shutil.copy(sweep / "report.csv", tmp_path / "sweep_end.csv")
    again = subprocess.run([*REPORT, str(sweep)], capture_output=True, text=True, env=ENV)
    assert again.returncode == 0 and (sweep / "report.csv").read_text() == (tmp_path / "sweep_end.csv").read_text()


def test_the_report_has_the_papers_table_of_accuracy_by_sparsity(tmp_path):
    for sparsity, accs in ((0.9, (0.88, 0.90)), (0.95, (0.85, 0.87))):
        for seed, acc in enumerate(accs):
            fake_run(tmp_path / f"rigl_{sparsity}_{seed}", "rigl", sparsity, seed, acc)
    fake_run(tmp_path / "set_0.95", "set", 0.95, 0, 0.80)
    fake_run(tmp_path / "dense", "dense", 0.0, 0, 0.91)
    path, _ = write_report(collect_runs([tmp_path]), tmp_path / "out", root=tmp_path)
    text = path.read_text()
    table = text[text.index("## Test accuracy (%) by sparsity: lenet300, fashion_mnist"):]
    assert "| method | 0.9 | 0.95 |" in table
    assert "| rigl erk | 89.00 ± 1.41 | 86.00 ± 1.41 |" in table
    assert "| set erk | — | 80.00 ± 0.00 |" in table
    assert "| dense erk (dense) | 91.00 ± 0.00 | 91.00 ± 0.00 |" in table


# --- the figures: their data checked on hand-made rows, then the drawn axes ---------------------------

THIRTEEN = ("static", "set", "rigl", "snfs", "gmp", "snip", "grasp", "mest", "granet", "topkast", "alpha", "beta",
            "gamma")
SPARSITIES = (0.9, 0.95, 0.98, 0.99)


def _row(algorithm, sparsity, accs, distribution="erk"):
    return {"algorithm": algorithm, "sparsity": sparsity, "distribution": distribution, "model": "lenet300",
            "dataset": "fashion_mnist", "settings": "", "test_accuracy_mean": statistics.mean(accs),
            "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": len(accs),
            "seeds": list(range(len(accs)))}


def _hand_rows():
    """Dense at 0.90/0.91, 13 methods at 90-99% with accuracies 0.80-0.89; Top-KAST at 98% collapses."""
    rows = [_row("dense", 0.0, (0.90, 0.91), "uniform")]
    for i, algorithm in enumerate(THIRTEEN):
        for j, sparsity in enumerate(SPARSITIES):
            accs = (0.85 - 0.01 * j + 0.002 * i, 0.86 - 0.01 * j + 0.001 * i, 0.84 - 0.01 * j)
            if (algorithm, sparsity) == ("topkast", 0.98):
                accs = (0.10, 0.02, 0.10)
            rows.append(_row(algorithm, sparsity, accs))
    return rows


def test_accuracy_vs_sparsity_data_dense_as_a_line_log_density_and_a_style_per_method():
    rows = _hand_rows()
    (panel,) = accuracy_vs_sparsity_data(rows)
    # The dense run is a baseline (mean ± std over its seeds), not a point at sparsity 0.
    assert [(b.label, b.mean, b.std) for b in panel.baselines] == [
        ("dense", pytest.approx(90.5), pytest.approx(100 * statistics.stdev((0.90, 0.91))))]
    assert {se.algorithm for se in panel.series} == set(THIRTEEN)
    for se in panel.series:
        assert se.sparsity == list(SPARSITIES)
        assert se.x == pytest.approx([1 - s for s in SPARSITIES]) and 1.0 not in se.x
    assert panel.densities == pytest.approx(sorted(1 - s for s in SPARSITIES))
    # Thirteen methods, thirteen different (colour, marker) pairs; the same again from shuffled rows.
    styles = {se.label: (se.colour, se.marker) for se in panel.series}
    assert len(set(styles.values())) == 13
    (again,) = accuracy_vs_sparsity_data(rows[::-1])
    assert {se.label: (se.colour, se.marker) for se in again.series} == styles


def test_error_bars_are_the_seed_std_and_a_collapsed_run_does_not_set_the_y_range(tmp_path):
    for sparsity, accs in ((0.9, (0.80, 0.84, 0.90)), (0.98, (0.70, 0.72, 0.77))):
        for seed, acc in enumerate(accs):
            fake_run(tmp_path / f"rigl_{sparsity}_{seed}", "rigl", sparsity, seed, acc)
    for seed, acc in enumerate((0.10, 0.03)):       # did not train
        fake_run(tmp_path / f"set_{seed}", "set", 0.98, seed, acc)
    fake_run(tmp_path / "set_90", "set", 0.9, 0, 0.82)
    for seed, acc in enumerate((0.90, 0.92)):
        fake_run(tmp_path / f"dense_{seed}", "dense", 0.0, seed, acc)
    (panel,) = accuracy_vs_sparsity_data(group_rows(collect_runs([tmp_path])))
    series = {se.algorithm: se for se in panel.series}
    rigl, set_ = series["rigl"], series["set"]
    seeds = ((0.80, 0.84, 0.90), (0.70, 0.72, 0.77))
    assert rigl.mean == pytest.approx([100 * statistics.mean(accs) for accs in seeds])
    assert rigl.std == pytest.approx([100 * statistics.stdev(accs) for accs in seeds])
    assert rigl.collapsed == [False, False] and set_.collapsed == [False, True]
    # chance 10% (ten classes), dense 91%: collapsed below 10 + (91 - 10) / 4.
    assert panel.collapse_below == pytest.approx(10 + (91 - 10) / 4)
    trained = [(m, s) for se in panel.series for m, s, c in zip(se.mean, se.std, se.collapsed) if not c]
    trained.append((panel.baselines[0].mean, panel.baselines[0].std))
    assert panel.ylim[0] <= min(m - s for m, s in trained) and panel.ylim[1] >= max(m + s for m, s in trained)
    assert panel.ylim[0] > 50 > set_.mean[1] and panel.collapsed_y == panel.ylim[0]


def test_the_drawn_accuracy_figure_has_a_log_density_axis_one_dense_line_and_marked_collapses(tmp_path):
    (panel,) = accuracy_vs_sparsity_data(_hand_rows())
    fig = accuracy_vs_sparsity_figure([panel])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlim()[0] > ax.get_xlim()[1]                    # denser on the left: sparsity grows rightwards
    assert [t.get_text() for t in ax.get_xticklabels()] == ["99", "98", "95", "90"]
    dense = [line for line in ax.get_lines() if line.get_gid() == "dense-baseline"]
    assert len(dense) == 1 and list(dense[0].get_ydata()) == pytest.approx([90.5, 90.5])
    assert len([p for p in ax.patches if p.get_gid() == "dense-band"]) == 1
    assert ax.get_ylim() == pytest.approx(panel.ylim)
    (collapsed,) = [line for line in ax.get_lines() if (line.get_gid() or "").startswith("collapsed:")]
    assert collapsed.get_gid() == "collapsed:topkast" and list(collapsed.get_ydata()) == [panel.ylim[0]]
    # Each series' error bars span its seed std (the one collapsed point is drawn without one).
    topkast = next(se for se in panel.series if se.algorithm == "topkast")
    for container in ax.containers:
        se = next(s for s in panel.series if s.label == container.get_label())
        spans = [seg[1][1] - seg[0][1] for seg in container.lines[2][0].get_segments()]
        kept = [2 * s for s, c in zip(se.std, se.collapsed) if not c]
        assert spans == pytest.approx(kept)
    assert len(ax.containers) == 13 and topkast.collapsed == [False, False, True, False]
    legend = fig.legends[0]
    assert len(legend.get_texts()) == 1 + 13 + 1 and "collapsed" in legend.get_texts()[-1].get_text()
    path = save(fig, tmp_path / "a.png")
    assert matplotlib.image.imread(path).shape[1] > 600


def test_plots_from_a_stored_csv_match_the_rows_it_was_written_from(tmp_path):
    rows = _hand_rows()
    write_csv([r for r in rows if r["algorithm"] != "dense"], tmp_path / "report.csv")
    write_csv([r for r in rows if r["algorithm"] == "dense"], tmp_path / "dense.csv")
    back = read_report_csv(tmp_path / "report.csv") + read_report_csv(tmp_path / "dense.csv")
    assert accuracy_vs_sparsity_data(back) == accuracy_vs_sparsity_data(rows)
    assert report_main(["--from-csv", str(tmp_path / "report.csv"), "--dense-from", str(tmp_path / "dense.csv"),
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    assert report_main(["--from-csv", str(tmp_path / "missing.csv")]) == 2


def test_training_curves_per_method_with_the_seed_band(tmp_path):
    curves_by_run = {("rigl", 0.9, 0): (0.5, 0.8), ("rigl", 0.9, 1): (0.6, 0.9), ("set", 0.9, 0): (0.4, 0.7),
                     ("set", 0.95, 0): (0.3, 0.6), ("topkast", 0.95, 0): (0.2, 0.05), ("dense", 0.0, 0): (0.7, 0.9)}
    for (algorithm, sparsity, seed), accs in curves_by_run.items():
        folder = tmp_path / f"{algorithm}_{sparsity}_{seed}"
        fake_run(folder, algorithm, sparsity, seed, accs[-1])
        records = [{"step": 100 * e, "epoch": e, "test/accuracy": a, "itop_rate": 0.1 * e} for e, a in
                   enumerate(accs, 1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = collect_runs([tmp_path])
    data = training_curves_data(runs, "test/accuracy")
    assert data.xlabel == "epoch" and [p.sparsity for p in data.panels] == [0.9, 0.95]
    first = {s.label: s for s in data.panels[0].series}
    assert set(first) == {"dense", "rigl", "set"} and first["dense"].dense
    assert first["rigl"].x == [1, 2] and first["rigl"].runs == 2
    assert first["rigl"].mean == pytest.approx([55, 85])
    assert first["rigl"].std == pytest.approx([100 * statistics.stdev((0.5, 0.6)), 100 * statistics.stdev((0.8, 0.9))])
    second = {s.label: s for s in data.panels[1].series}
    assert second["topkast"].collapsed and not second["set"].collapsed
    assert data.ylim[0] > 5                                        # the collapsed curve does not set it
    itop = training_curves_data(runs, "itop_rate", with_dense=False, floor=0.0)
    assert all(not s.dense for p in itop.panels for s in p.series) and itop.ylim[0] == 0.0
    fig = training_curves_figure(data, "test accuracy (%)")
    assert len([line for line in fig.axes[0].get_lines() if (line.get_gid() or "").startswith("curve:")]) == 3
    assert len(fig.axes[0].collections) == 3                       # a seed band per curve
    assert any("topkast collapsed" in t.get_text() for t in fig.axes[1].texts)


# --- curves.csv: the over-training figures redrawn from the stored per-epoch table ----------------------

# Per run (algorithm, sparsity, seed): test accuracy at epochs 1-3 and the ITOP rate at epochs 0-3 (epoch 0,
# before training, logs no test accuracy).
HAND_CURVES = {("rigl", 0.9, 0): ((0.50, 0.70, 0.80), (0.10, 0.20, 0.30, 0.40)),
               ("rigl", 0.9, 1): ((0.60, 0.74, 0.86), (0.10, 0.24, 0.32, 0.46)),
               ("set", 0.9, 0): ((0.40, 0.60, 0.70), (0.10, 0.30, 0.50, 0.70)),
               ("set", 0.95, 0): ((0.30, 0.50, 0.60), (0.05, 0.15, 0.25, 0.35)),
               ("dense", 0.0, 0): ((0.70, 0.85, 0.90), (1.0, 1.0, 1.0, 1.0))}


def _curve_runs(root):
    for (algorithm, sparsity, seed), (accs, itops) in HAND_CURVES.items():
        folder = root / f"{algorithm}_{sparsity}_{seed}"
        fake_run(folder, algorithm, sparsity, seed, accs[-1])
        records = [{"step": 0, "epoch": 0, "itop_rate": itops[0]}]
        records += [{"step": 100 * e, "epoch": e, "test/accuracy": a, "itop_rate": i}
                    for e, (a, i) in enumerate(zip(accs, itops[1:]), 1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return collect_runs([root])


def test_curves_csv_holds_the_seed_mean_and_std_and_redraws_the_same_figures(tmp_path):
    runs = _curve_runs(tmp_path / "runs")
    out = tmp_path / "out"
    write_report(runs, out, root=tmp_path / "runs")
    header = (out / "curves.csv").read_text().splitlines()[0]
    assert header == ("algorithm,sparsity,distribution,model,dataset,settings,epoch,test_accuracy_mean,"
                      "test_accuracy_std,test_accuracy_runs,itop_rate_mean,itop_rate_std,itop_rate_runs")
    table = read_curves_csv(out / "curves.csv")
    rigl = [t for t in table if t["algorithm"] == "rigl"]
    (a0, i0), (a1, i1) = HAND_CURVES[("rigl", 0.9, 0)], HAND_CURVES[("rigl", 0.9, 1)]
    assert [t["epoch"] for t in rigl] == [0, 1, 2, 3] and rigl[0]["sparsity"] == 0.9
    assert rigl[0]["test_accuracy_mean"] is None and rigl[0]["test_accuracy_runs"] is None   # epoch 0: none
    assert [t["test_accuracy_mean"] for t in rigl[1:]] == pytest.approx([(x + y) / 2 for x, y in zip(a0, a1)])
    assert [t["test_accuracy_std"] for t in rigl[1:]] == pytest.approx(
        [statistics.stdev((x, y)) for x, y in zip(a0, a1)])
    assert [t["itop_rate_mean"] for t in rigl] == pytest.approx([(x + y) / 2 for x, y in zip(i0, i1)])
    assert [t["itop_rate_std"] for t in rigl] == pytest.approx([statistics.stdev((x, y)) for x, y in zip(i0, i1)])
    assert {t["test_accuracy_runs"] for t in rigl[1:]} == {t["itop_rate_runs"] for t in rigl} == {2}
    set95 = [t for t in table if (t["algorithm"], t["sparsity"]) == ("set", 0.95)]
    assert [t["itop_rate_std"] for t in set95] == [0.0] * 4 and {t["itop_rate_runs"] for t in set95} == {1}
    # The stored tables give the figure data the runs give, to the last bit.
    rows = read_report_csv(out / "report.csv")
    accuracy = curve_figure_data(rows, table, "test/accuracy")
    assert accuracy == training_curves_data(runs, "test/accuracy")
    itop = curve_figure_data(rows, table, "itop_rate", with_dense=False, floor=0.0)
    assert itop == training_curves_data(runs, "itop_rate", with_dense=False, floor=0.0)
    assert accuracy.xlabel == "epoch" and [p.sparsity for p in accuracy.panels] == [0.9, 0.95]
    series = {s.label: s for s in accuracy.panels[0].series}
    assert set(series) == {"dense", "rigl", "set"} and series["rigl"].runs == 2
    assert series["rigl"].x == [1, 2, 3]
    assert series["rigl"].mean == pytest.approx([50 * (x + y) for x, y in zip(a0, a1)])
    assert series["rigl"].std == pytest.approx([100 * statistics.stdev((x, y)) for x, y in zip(a0, a1)])
    itop_rigl = next(s for s in itop.panels[0].series if s.label == "rigl")
    assert itop_rigl.x == [0, 1, 2, 3] and itop_rigl.mean == pytest.approx([50 * (x + y) for x, y in zip(i0, i1)])
    # The CLI redraws both PNGs from the CSVs, the same pictures write_report drew from the runs.
    again = tmp_path / "again"
    assert report_main(["--from-csv", str(out / "report.csv"), "--curves-from", str(out / "curves.csv"),
                        "--out", str(again)]) == 0
    for png in ("accuracy_vs_sparsity.png", "test_accuracy_over_training.png", "itop_over_training.png"):
        assert (again / png).read_bytes() == (out / png).read_bytes()
    assert report_main(["--from-csv", str(out / "report.csv"), "--out", str(tmp_path / "plain")]) == 0
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["accuracy_vs_sparsity.png"]


def test_curves_from_a_wrong_file_or_without_a_report_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    write_report(_curve_runs(tmp_path / "runs"), out, root=tmp_path / "runs")
    assert report_main(["--from-csv", str(out / "report.csv"), "--curves-from", str(out / "report.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a curves.csv written by dst-report (it needs the "
                                                    "columns algorithm, sparsity, distribution, model, dataset, "
                                                    "settings and epoch or step).")
    other = [r for r in read_report_csv(out / "report.csv") if r["algorithm"] == "set"]
    write_csv(other, tmp_path / "set.csv")
    rigl_only = [line for line in (out / "curves.csv").read_text().splitlines(keepends=True)
                 if not line.startswith("set,")]
    (tmp_path / "rigl_curves.csv").write_text("".join(rigl_only))
    assert report_main(["--from-csv", str(tmp_path / "set.csv"), "--curves-from",
                        str(tmp_path / "rigl_curves.csv")]) == 2
    assert "hold no curve of the settings in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_main(["--curves-from", str(out / "curves.csv")])
