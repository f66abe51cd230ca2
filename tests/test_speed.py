"""benchmarks/speed.py in its test-size mode: it runs every section and writes its JSON.
No figure is asserted against a time (speed is read from the script's output, never tested)."""

import json

import pytest

from benchmarks import speed


@pytest.mark.slow
def test_quick_mode_writes_every_section(tmp_path):
    out = tmp_path / "speed.json"
    report = speed.main(["--quick", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report))
    tables = out.with_suffix(".md").read_text()  # the tables, beside the JSON
    assert "--quick: test sizes" in tables and all(f"## {t}" in tables for t, _ in speed.speed_tables.SECTIONS.values())
    assert set(speed.SECTIONS) <= set(written) and written["quick"] is True
    assert written["machine"]["device"] == "cpu" and written["machine"]["cpu_threads"] >= 1
    for shape in ("32x32x3", "28x28x1"):
        row = written["data"][shape]
        assert row["ours_img_s"] > 0 and row["torchvision_0_workers_img_s"] > 0
        best = max(row["torchvision_0_workers_img_s"], row["torchvision_2_workers_img_s"])
        assert row["ratio_ours_over_best_torchvision"] == pytest.approx(row["ours_img_s"] / best)
    assert {k.split()[0] for k in written["epoch"]} == {"FT", "GA"}
    for row in written["epoch"].values():
        assert row["ratio_papers_over_ours"] == pytest.approx(row["papers_style_s"] / row["ours_s"])
        assert row["device_defaults"] == "channels_last"  # the CPU's defaults, utils.SPEED_DEFAULTS
    throughput = written["options"]["throughput"]
    assert set(throughput) == {"convnet 28x28x1", "smallcnn 8x8x1", "convnet 32x32x3"}
    for rows in throughput.values():  # quick mode leaves compile out
        assert set(rows) == {"fp32 eager", "amp", "channels_last", "amp+channels_last"}
        assert rows["fp32 eager"]["speedup_over_fp32_eager"] == 1.0
    accuracy = written["options"]["accuracy"]
    assert "fp32 eager" in accuracy["sets"] and accuracy["dataset"] == "digits"
    for row in accuracy["sets"].values():
        assert 0 <= row["mean"] <= 100
    loop_methods = {m for m, cls in speed.METHODS.items() if cls.kind == "loop"}
    assert set(written["addons"]) == loop_methods
    for row in written["addons"].values():
        assert set(row) == set(speed.ADDONS) and row["none"]["ratio_over_none"] == 1.0
    for name, row in written["eval"].items():
        assert row["total_s"] >= row["svc_attack_s"] > 0 and row["loss_attack_s"] > 0, name


@pytest.mark.slow
def test_update_replaces_only_the_sections_run(tmp_path):
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--sections", "eval", "--out", str(out)])
    first = json.loads(out.read_text())
    speed.main(["--quick", "--sections", "data", "--out", str(out), "--update"])
    both = json.loads(out.read_text())
    assert both["eval"] == first["eval"] and "data" in both
    assert set(both["section_run_at"]) == {"eval", "data"}
    speed.main(["--quick", "--sections", "data", "--out", str(out)])  # without --update: a fresh file
    assert "eval" not in json.loads(out.read_text())


def test_an_unknown_section_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown section"):
        speed.main(["--quick", "--sections", "data,bogus", "--out", str(tmp_path / "s.json")])


def test_the_speed_script_recommends_what_it_measured_on_this_machine():
    from benchmarks.speed import recommendation

    def report(amp, cl, native):
        return {"machine": {"cpu": "X", "cpu_capability": "AVX512", "amx_bf16": native, "avx512_bf16": False},
                "options": {"throughput": {
                    "a": {"amp": {"speedup_over_fp32_eager": amp[0]}, "channels_last": {"speedup_over_fp32_eager": cl}},
                    "b": {"amp": {"speedup_over_fp32_eager": amp[1]}}}}}

    fast = recommendation(report((1.19, 1.72), 1.3, True))
    assert "native bf16: yes" in fast and "amp: 1.19-1.72x" in fast and "pass --amp" in fast
    slow = recommendation(report((0.05, 0.14), 1.01, False))
    assert "native bf16: no" in slow and "amp: 0.05-0.14x" in slow and "leave it off" in slow
    assert "channels_last: 1.01-1.01x" in slow and "mixed" in slow
    assert "--sections options" in recommendation({"machine": report((1, 1), 1, False)["machine"]})


def test_the_tables_are_generated_from_the_json_and_say_where_they_were_measured(tmp_path):
    """docs/speed/speed_cpu.md is this renderer's output for docs/speed/speed_cpu.json, not a pasted copy."""
    from benchmarks import speed_tables

    report = json.loads((speed_tables.Path(__file__).parents[1] / "docs/speed/speed_cpu.json").read_text())
    text = speed_tables.markdown(report, "docs/speed/speed_cpu.json")
    committed = (speed_tables.Path(__file__).parents[1] / "docs/speed/speed_cpu.md").read_text()
    assert text == committed, "regenerate: python -m benchmarks.speed_tables docs/speed/speed_cpu.json"
    assert report["machine"]["cpu"] in text and f"| GA | {report['addons']['GA']['Mask']['ratio_over_none']:.2f}x |" \
        in text
    report["addons"]["GA"]["Mask"]["ratio_over_none"] = 9.87
    assert "| GA | 9.87x |" in speed_tables.markdown(report, "x")
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert "9.87x" in speed_tables.write(tmp_path / "r.json").read_text()
