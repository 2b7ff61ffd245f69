"""Paired per-image differences (tfsr_defense.comparison) against hand computation."""

import math

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
