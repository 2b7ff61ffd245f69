"""The studies' overview (tfsr_defense.overview): each network against its plain counterpart."""

import os

from PIL import Image
import pytest

from tfsr_defense import overview


def _rows(clean, fda, ifgsm, clever):
  """Rows of one network: two BSD100 images (clean, FDA and I-FGSM at 4/255, FDA at 8/255)
  and one Set5 CLEVER cell."""
  rows = []
  for image, c, f, i in zip(("a", "b"), clean, fda, ifgsm):
    rows.append(dict(model="x", dataset="bsd100", image=image, kind="clean", psnr_y=c))
    rows.append(dict(model="x", dataset="bsd100", image=image, kind="attack", attack="fda",
                     attack_variant="relu", eps_255=4.0, steps=10, sr_psnr=f))
    rows.append(dict(model="x", dataset="bsd100", image=image, kind="attack", attack="fda",
                     attack_variant="relu", eps_255=8.0, steps=10, sr_psnr=f - 5.0))
    rows.append(dict(model="x", dataset="bsd100", image=image, kind="attack", attack="ifgsm",
                     eps_255=4.0, steps=50, sr_psnr=i))
  rows.append(dict(model="x", dataset="set5", image="c", kind="clever", clever=clever))
  return rows


NETWORKS = {
    "edsr_lambda0": dict(baseline="edsr_lambda0", variants=["lambda/lambda=0"],
                         rows=_rows((26.0, 27.0), (30.0, 31.0), (35.0, 36.0), 100.0)),
    "edsr_lambda1": dict(baseline="edsr_lambda0", variants=["lambda/lambda=1", "ablation/PE+noise"],
                         rows=_rows((25.9, 26.8), (33.0, 35.0), (34.0, 37.0), 90.0)),
    # Its plain network was not evaluated: left out.
    "carn_lambda1": dict(baseline="carn_lambda0", variants=["networks/carn ER"],
                         rows=_rows((25.0, 26.0), (30.0, 31.0), (35.0, 36.0), 100.0)),
}


def test_differences_by_hand():
  (d,) = overview.network_differences(NETWORKS)
  assert (d["run"], d["baseline"], d["variants"]) == (
      "edsr_lambda1", "edsr_lambda0", ["lambda/lambda=1", "ablation/PE+noise"])
  # clean: -0.1, -0.2 -> mean -0.15, se = std([-0.1, -0.2], ddof=1) / sqrt(2) = 0.05.
  assert d["clean PSNR-Y"]["mean"] == pytest.approx(-0.15)
  assert d["clean PSNR-Y"]["se"] == pytest.approx(0.05)
  assert (d["clean PSNR-Y"]["higher"], d["clean PSNR-Y"]["n"]) == (0, 2)
  # FDA at 4/255 (not 8): +3, +4; I-FGSM: -1, +1; CLEVER: one image, -10, no standard error.
  assert (d["FDA"]["mean"], d["FDA"]["se"], d["FDA"]["higher"]) == (
      pytest.approx(3.5), pytest.approx(0.5), 2)
  assert (d["I-FGSM"]["mean"], d["I-FGSM"]["se"], d["I-FGSM"]["higher"]) == (
      pytest.approx(0.0), pytest.approx(1.0), 1)
  assert (d["CLEVER set5"]["mean"], d["CLEVER set5"]["se"]) == (pytest.approx(-10.0), None)
  (d8,) = overview.network_differences(NETWORKS, eps_255=8.0)
  assert d8["FDA"]["mean"] == pytest.approx(3.5) and d8["I-FGSM"] is None  # no I-FGSM at 8
  assert overview.network_differences(NETWORKS, dataset="set14")[0]["clean PSNR-Y"] is None


def test_write_overview(tmp_path):
  diffs = overview.write_overview(str(tmp_path), NETWORKS)
  assert [d["run"] for d in diffs] == ["edsr_lambda1"]
  with open(tmp_path / overview.TABLE_FILE, encoding="utf-8") as f:
    md = f.read()
  assert ("| edsr_lambda1 | edsr_lambda0 | -0.15 ± 0.05 (0/2) | +3.50 ± 0.50 (2/2) | "
          "+0.00 ± 1.00 (1/2) | -10.0 (0/1) | lambda/lambda=1, ablation/PE+noise |") in md
  assert "carn_lambda1" not in md
  with Image.open(tmp_path / overview.FIGURE_FILE) as fig:  # a panel per attack
    assert fig.size == (round(2 * 5.6 * 110), round(4.4 * 110))
  # Only plain networks: nothing to compare, nothing written.
  empty = tmp_path / "empty"
  empty.mkdir()
  assert overview.write_overview(str(empty), {"edsr_lambda0": NETWORKS["edsr_lambda0"]}) == []
  assert os.listdir(empty) == []
