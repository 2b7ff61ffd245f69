"""Paired per-image differences (tfsr_defense.comparison) against hand computation."""

import json
import math
import os
import subprocess
import sys

import pytest

from tfsr_defense import comparison


def _rows():
  rows = []
  for model, clean, sr, clever in (("V", (30.0, 28.0, 27.0), (40.0, 35.0, 33.0), (5.0, 7.0, 9.0)),
                                   ("B", (30.5, 27.0, None), (38.0, 36.0, 30.0), (6.0, 9.0, 8.0))):
    for i, image in enumerate(("a", "b", "c")):
      if clean[i] is not None:  # B has no clean row for image c
        rows.append(dict(model=model, dataset="bsd100", image=image, kind="clean",
                         psnr_y=clean[i]))
      rows.append(dict(model=model, dataset="set5", image=image, kind="clever", clever=clever[i]))
      rows.append(dict(model=model, dataset="bsd100", image=image, kind="attack", attack="ifgsm",
                       eps_255=4.0, steps=50, sr_psnr=sr[i],
                       adv_psnr_y=float("nan") if image == "b" else sr[i] - 10))
  rows.append(dict(model="other", dataset="bsd100", image="a", kind="clean", psnr_y=99.0))
  return rows


def test_paired_differences_by_hand():
  out = comparison.paired_differences(_rows(), "V", "B")
  assert [(p["kind"], p["dataset"]) for p in out] == [
      ("clean", "bsd100"), ("clever", "set5"), ("attack", "bsd100")]
  clean, clever, attack = out
  # clean: images a, b only: d = (-0.5, +1.0): mean 0.25, sd = 1.06066, se = 0.75.
  assert clean["n"] == 2 and clean["mean"] == pytest.approx(0.25)
  assert clean["se"] == pytest.approx(0.75) and clean["higher"] == 1
  # CLEVER: d = (-1, -2, +1): mean -2/3, sd = sqrt(7/3), se = sqrt(7/9).
  assert clever["mean"] == pytest.approx(-2 / 3)
  assert clever["se"] == pytest.approx(math.sqrt(7 / 9)) and clever["higher"] == 1
  # SR-PSNR: d = (+2, -1, +3): mean 4/3, sd = sqrt(13/3), se = sqrt(13/9).
  assert (attack["attack"], attack["eps_255"], attack["steps"], attack["metric"]) == (
      "ifgsm", 4.0, 50, "sr_psnr")
  assert attack["mean"] == pytest.approx(4 / 3) and attack["higher"] == 2
  assert attack["se"] == pytest.approx(math.sqrt(13 / 9))


def test_against_hr_skips_non_finite_values_and_single_images():
  [attack] = [p for p in comparison.paired_differences(_rows(), "V", "B", "adv_psnr_y")
              if p["kind"] == "attack"]
  # Image b is NaN for both: a and c remain, d = (+2, +3).
  assert attack["n"] == 2 and attack["mean"] == pytest.approx(2.5)
  one = [r for r in _rows() if r["image"] == "a"]
  [clean] = [p for p in comparison.paired_differences(one, "V", "B") if p["kind"] == "clean"]
  assert clean["n"] == 1 and clean["se"] is None and clean["mean"] == pytest.approx(-0.5)
  assert comparison.paired_differences(_rows(), "V", "nobody") == []
  with pytest.raises(ValueError, match="attack_metric must be one of"):
    comparison.paired_differences(_rows(), "V", "B", "sr_ssim")


def test_markdown_cells():
  lines = comparison.markdown_lines([("V", "B", comparison.paired_differences(_rows(), "V", "B"))])
  assert lines[0] == "| variant | baseline | PSNR-Y bsd100 (dB) | CLEVER set5 |"
  assert lines[2] == "| V | B | +0.25 ± 0.75 (1/2) | -0.7 ± 0.9 (1/3) |"
  assert lines[3] == ""
  assert lines[4] == "| variant | baseline | attack | dataset | 4/255 |"
  assert lines[6] == "| V | B | ifgsm | bsd100 | +1.33 ± 1.20 (2/3) |"
  assert comparison.markdown_lines([]) == []


def test_paired_figure(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tfsr_defense import plots  # pylint: disable=g-import-not-at-top
  pairs = [("V", "B", comparison.paired_differences(_rows(), "V", "B"))]
  path = plots.plot_paired(pairs, ["B", "V"], str(tmp_path / "paired.png"), title="t")
  with Image.open(path) as fig:  # one attack panel + the clean panel
    assert (fig.width, fig.height) == (round(2 * 4.6 * 110), round(3.8 * 110))
  assert plots.plot_paired([], ["B", "V"], str(tmp_path / "none.png")) is None
  assert not (tmp_path / "none.png").exists()


def _report(directory, rows):
  directory.mkdir(parents=True)
  (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(directory)


def test_compare_reports_across_reports_and_step_counts(tmp_path):
  rows = _rows()
  # V's attack rows again with 100 steps in a second report, 1 dB lower on every image:
  # the same differences minus 1 -> d = (+1, -2, +2): mean 1/3, se sqrt(13/9), 2/3 higher.
  more = [dict(r, steps=100, sr_psnr=r["sr_psnr"] - (1.0 if r["model"] == "V" else 0.0))
          for r in rows if r["kind"] == "attack" and r["model"] in ("V", "B")]
  first, second = _report(tmp_path / "a", rows), _report(tmp_path / "b", more)
  text = comparison.compare_reports([first, second], "V", "B", ("sr_psnr",))
  assert "| V | B | +0.25 ± 0.75 (1/2) | -0.7 ± 0.9 (1/3) |" in text
  assert "| V | B | ifgsm, 50 steps | bsd100 | +1.33 ± 1.20 (2/3) |" in text
  assert "| V | B | ifgsm, 100 steps | bsd100 | +0.33 ± 1.20 (2/3) |" in text
  # One step count: the attack column has no steps; a second metric adds its own table.
  text = comparison.compare_reports([first], "V", "B", ("sr_psnr", "adv_psnr_y"))
  assert "| V | B | ifgsm | bsd100 | +1.33 ± 1.20 (2/3) |" in text
  # adv PSNR-Y: image b is NaN for both -> a, c: d = (+2, +3): mean 2.5, se 0.5.
  assert "| V | B | ifgsm | bsd100 | +2.50 ± 0.50 (2/2) |" in text


def test_compare_reports_errors(tmp_path):
  report = _report(tmp_path / "a", _rows())
  with pytest.raises(FileNotFoundError, match="No evaluation report in .*nowhere"):
    comparison.compare_reports([report, str(tmp_path / "nowhere")], "V", "B")
  with pytest.raises(ValueError, match=r"Model\(s\) \['W'\] not in .* they hold: B, V, other"):
    comparison.compare_reports([report], "W", "B")
  with pytest.raises(ValueError, match="Unknown metric"):
    comparison.compare_reports([report], "V", "B", ("psnr",))
  with pytest.raises(ValueError, match="No image has a value for both V and other"):
    comparison.compare_reports([_report(tmp_path / "c", [
        dict(model="V", dataset="set5", image="x", kind="clean", psnr_y=30.0),
        dict(model="other", dataset="set5", image="y", kind="clean", psnr_y=31.0)])],
                               "V", "other")


def test_compare_cli(tmp_path):
  report = _report(tmp_path / "a", _rows())
  out = tmp_path / "pairs.md"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.compare", f"--report_dirs={report}",
                         "--model=V", "--baseline=B", f"--output={out}"],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-1000:]
  assert "| V | B | ifgsm | bsd100 | +1.33 ± 1.20 (2/3) |" in proc.stdout
  assert out.read_text() == proc.stdout
  proc = subprocess.run([sys.executable, "-m", "tfsr_defense.compare", f"--report_dirs={report}",
                         "--model=W", "--baseline=B"],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "tfsr_defense.compare: error: Model(s) ['W'] not in")
