"""tfsr_defense: adversarially robust deep image super-resolution (Choi et al., ACCV 2020).

Importing the package turns on TensorFlow's oneDNN CPU kernels (``TF_ENABLE_ONEDNN_OPTS=1``)
unless the variable is already set. TF 2.14 enables them by default only on x86 CPUs with
AVX512_VNNI, AVX512_BF16 or AMX; on an AVX2-only EPYC they made a float32 input gradient of
EDSR-baseline x4 1.48x and a training step 1.32x faster (benchmarks/onednn.sh,
README "Benchmarks"). The setting takes effect only if the package is imported before
``tensorflow`` (as ``python -m tfsr_defense.<tool>`` does); set ``TF_ENABLE_ONEDNN_OPTS=0`` to
keep TF's default Eigen kernels.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tfsr_defense import layers, models  # noqa: E402,F401

__version__ = "0.1.0"
