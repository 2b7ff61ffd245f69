"""This project's TensorFlow EDSR-baseline against the same network in PyTorch, in one run.

    pip install torch==2.13.0          # benchmark-only dependency (CPU build), not in CI
    python benchmarks/compare_pytorch.py
    python benchmarks/compare_pytorch.py --rounds=1 --train_steps=1 --batch_size=2 --patch_size=16

A faithful PyTorch EDSR-baseline x4 (the official code's layout: mean shift,
head conv, 16 residual blocks conv-ReLU-conv, body conv, long skip, two x2
sub-pixel steps, tail conv; its parameter count is asserted equal to
``models.build_model('edsr', 4)``'s 1,517,571) and the project's Keras model
are timed side by side, interleaved round by round so that both see the same
machine load:

* one training step (forward, L1 loss, backward, Adam update; batch
  --batch_size of LR --patch_size, x4), float32 and bf16 (TF:
  ``mixed_bfloat16`` policy; PyTorch: ``torch.autocast('cpu', bfloat16)``),
  PyTorch in channels-last (NHWC, its fast CPU layout) and default NCHW;
* one input gradient (the gradient of ||S(x)||^2 w.r.t. a 120 x 80 LR image,
  batch 1), the unit of every attack and of CLEVER.

With --profile it then profiles one training step of TF and of PyTorch
channels-last per precision and prints where the time goes by op type:
TensorFlow's profiler (``tf.profiler.experimental``, its ``tensorflow_stats``
table read with ``tensorboard-plugin-profile``'s protobuf: pip install
tensorboard-plugin-profile==2.14.0, benchmark-only) and ``torch.profiler``
(self CPU time per aten op), grouped as convolution forward / convolution
backward / everything else.

Achieved GFLOP/s count the convolutions' multiply-adds (2 FLOP each)
analytically: a training step is 3 x the forward FLOPs (forward, input and
weight gradients), an input gradient 2 x. The peak is the best 4096 x 4096
matmul of the same run (TF and PyTorch, float32 and bf16). Prints medians over
--rounds; compare as ratios (shared machines vary by up to 40 %).
"""

import glob
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags
import numpy as np
import tensorflow as tf

from tfsr_defense import models, precision

import machine  # benchmarks/machine.py: the command and machine header

try:
  import torch
  from torch import nn
except ImportError:  # pragma: no cover - benchmark-only dependency
  sys.exit("compare_pytorch.py needs PyTorch: pip install torch==2.13.0 (CPU build).")

flags.DEFINE_integer("batch_size", 16, "Training batch size.")
flags.DEFINE_integer("patch_size", 48, "LR patch side (training).")
flags.DEFINE_integer("grad_height", 80, "LR height of the input-gradient image.")
flags.DEFINE_integer("grad_width", 120, "LR width of the input-gradient image.")
flags.DEFINE_integer("train_steps", 3, "Timed training steps per round (after 2 warm-up steps).")
flags.DEFINE_integer("grad_steps", 5, "Timed input gradients per round (after 2 warm-up).")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds; medians are reported.")
flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul measuring the peak.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "float32 and/or bfloat16.")
flags.DEFINE_bool("profile", False, "Also profile one train step per library and precision "
                  "(op types, self time).")
flags.DEFINE_integer("profile_top", 8, "Op types listed per profile.")
FLAGS = flags.FLAGS

SCALE = 4
N_FEATS = 64
N_RESBLOCKS = 16
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


# ---------------------------------------------------------------------------
# The PyTorch network (the official EDSR code's layout, written here)
# ---------------------------------------------------------------------------

class TorchResBlock(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.conv1 = nn.Conv2d(c, c, 3, padding=1)
    self.conv2 = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return x + self.conv2(torch.relu(self.conv1(x)))


class TorchEDSR(nn.Module):
  """EDSR-baseline x4: [0,1] NCHW in, [0,1] NCHW out ([0,255] inside)."""

  def __init__(self, c=N_FEATS, n_blocks=N_RESBLOCKS):
    super().__init__()
    self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1) * 255.0)
    self.head = nn.Conv2d(3, c, 3, padding=1)
    self.body = nn.Sequential(*[TorchResBlock(c) for _ in range(n_blocks)])
    self.body_conv = nn.Conv2d(c, c, 3, padding=1)
    self.up = nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2),
                            nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
    self.tail = nn.Conv2d(c, 3, 3, padding=1)

  def forward(self, x):
    x = x * 255.0 - self.mean
    h = self.head(x)
    x = self.body_conv(self.body(h)) + h
    return (self.tail(self.up(x)) + self.mean) / 255.0


def forward_flops(h, w, c=N_FEATS, n_blocks=N_RESBLOCKS):
  """Convolution FLOPs (2 per multiply-add) of one EDSR-baseline x4 forward on an h x w LR image."""
  k = 9
  lr = h * w
  flops = lr * 3 * c * k                      # head
  flops += lr * (2 * n_blocks + 1) * c * c * k  # residual blocks + body conv
  flops += lr * c * 4 * c * k                  # upsampler conv 1 (LR size)
  flops += 4 * lr * c * 4 * c * k              # upsampler conv 2 (2x size)
  flops += 16 * lr * c * 3 * k                 # tail (4x size)
  return 2 * flops


# ---------------------------------------------------------------------------
# Timed work
# ---------------------------------------------------------------------------

def _median_time(fn, n, warmup=2):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class TFCase:
  """The project's Keras EDSR under one Keras policy: train step and input gradient."""

  def __init__(self, policy, lr, hr, x):
    tf.keras.utils.set_random_seed(0)
    with precision.policy_scope(policy):
      self.model = models.build_model("edsr", SCALE, entropy_weight=0.0)
    self.opt = tf.keras.optimizers.Adam(1e-4)
    self.lr, self.hr, self.x = lr, hr, x
    model, opt = self.model, self.opt

    @tf.function
    def train_step(lr, hr):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.abs(tf.cast(model(lr, training=True), tf.float32) - hr))
      grads = tape.gradient(loss, model.trainable_variables)
      opt.apply_gradients(zip(grads, model.trainable_variables))
      return loss

    @tf.function
    def input_grad(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.square(tf.cast(model(x), tf.float32)))
      return tape.gradient(loss, x)

    self._train, self._grad = train_step, input_grad

  def train(self):
    self._train(self.lr, self.hr).numpy()

  def grad(self):
    self._grad(self.x).numpy()


class TorchCase:
  """The PyTorch EDSR: float32 or bf16 autocast, channels-last or NCHW."""

  def __init__(self, dtype, channels_last, lr, hr, x):
    torch.manual_seed(0)
    self.model = TorchEDSR()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=fmt)
    self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(
        memory_format=fmt)
    self.lr, self.hr, self.x = to(lr), to(hr), to(x)
    self.autocast = dtype == "bfloat16"

  def _ctx(self):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast)

  def train(self):
    self.opt.zero_grad(set_to_none=True)
    with self._ctx():
      sr = self.model(self.lr)
    loss = (sr.float() - self.hr).abs().mean()
    loss.backward()
    self.opt.step()

  def grad(self):
    x = self.x.clone().requires_grad_(True)
    with self._ctx():
      out = self.model(x)
    (out.float() ** 2).sum().backward()
    return x.grad


def matmul_peak(n, reps=5):
  """Best GFLOP/s of an n x n matmul: {(library, dtype): GFLOP/s}."""
  flops = 2.0 * n ** 3
  out = {}
  for dtype in ("float32", "bfloat16"):
    a = tf.random.uniform([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    mm = tf.function(lambda a: tf.linalg.matmul(a, a))
    mm(a).numpy()
    best = min(_median_time(lambda: mm(a).numpy(), 1, warmup=0) for _ in range(reps))
    out[("tf", dtype)] = flops / best / 1e9
    t = torch.rand(n, n, dtype=getattr(torch, dtype))
    torch.mm(t, t)
    best = min(_median_time(lambda: torch.mm(t, t), 1, warmup=0) for _ in range(reps))
    out[("torch", dtype)] = flops / best / 1e9
  return out


def _conv_group(op):
  """'conv forward' / 'conv backward' / 'other' of a TF op type or an aten op name."""
  low = op.lower()
  if "conv" in low and ("backprop" in low or "backward" in low):
    return "conv backward"
  if "conv" in low:
    return "conv forward"
  return "other"


def profile_tf_step(case):
  """{op type: self ms} of one TF train step (tf.profiler's tensorflow_stats, host ops)."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.python.profiler.internal import _pywrap_profiler
  try:
    from tensorboard_plugin_profile.protobuf import tf_stats_pb2
  except ImportError:
    sys.exit("--profile needs: pip install tensorboard-plugin-profile==2.14.0")
  # pylint: enable=g-import-not-at-top
  case.train()
  with tempfile.TemporaryDirectory(prefix="tf_profile_") as logdir:
    tf.profiler.experimental.start(logdir)
    case.train()
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    data, ok = _pywrap_profiler.xspace_to_tools_data([path], "tensorflow_stats")
  if not ok:
    raise RuntimeError(f"tf.profiler could not convert {path}")
  db = tf_stats_pb2.TfStatsDatabase()
  db.ParseFromString(data)
  out = {}
  for r in db.without_idle.tf_stats_record:
    out[r.op_type] = out.get(r.op_type, 0.0) + r.total_self_time_in_us / 1e3
  return out


def profile_torch_step(case):
  """{aten op: self ms} of one PyTorch train step (torch.profiler, CPU)."""
  from torch import profiler  # pylint: disable=g-import-not-at-top
  case.train()
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    case.train()
  return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def print_profile(label, ops, top):
  total = sum(ops.values())
  groups = {}
  for op, ms in ops.items():
    groups[_conv_group(op)] = groups.get(_conv_group(op), 0.0) + ms
  print(f"  {label}: {total:.0f} ms of op self time; "
        + ", ".join(f"{g} {groups.get(g, 0.0):.0f} ms ({groups.get(g, 0.0) / total:.0%})"
                    for g in ("conv forward", "conv backward", "other")), flush=True)
  for op, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
    print(f"    {op:48s} {ms:8.1f} ms {ms / total:6.1%}", flush=True)


def main(argv):
  del argv
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  machine.print_header(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)")
  rng = np.random.default_rng(0)
  b, p = FLAGS.batch_size, FLAGS.patch_size
  lr = rng.random((b, p, p, 3), dtype=np.float32)
  hr = rng.random((b, p * SCALE, p * SCALE, 3), dtype=np.float32)
  x = rng.random((1, FLAGS.grad_height, FLAGS.grad_width, 3), dtype=np.float32)

  cases = {}
  for prec in FLAGS.precisions:
    policy = "float32" if prec == "float32" else "mixed_bfloat16"
    cases[("tf", prec)] = TFCase(policy, tf.constant(lr), tf.constant(hr), tf.constant(x))
    cases[("torch NHWC", prec)] = TorchCase(prec, True, lr, hr, x)
    cases[("torch NCHW", prec)] = TorchCase(prec, False, lr, hr, x)
  n_tf = cases[("tf", FLAGS.precisions[0])].model.count_params()
  n_torch = sum(t.numel() for t in cases[("torch NHWC", FLAGS.precisions[0])].model.parameters())
  assert n_tf == n_torch == 1_517_571, (n_tf, n_torch)
  print(f"EDSR-baseline x{SCALE}: {n_tf:,} parameters in both; train batch {b} of LR {p}x{p}; "
        f"input gradient on LR {FLAGS.grad_width}x{FLAGS.grad_height}, batch 1", flush=True)

  timings = {(k, job): [] for k in cases for job in ("train", "grad")}
  peaks = []
  for r in range(FLAGS.rounds):
    peaks.append(matmul_peak(FLAGS.matmul_size))
    for key, case in cases.items():
      timings[(key, "train")].append(_median_time(case.train, FLAGS.train_steps))
      timings[(key, "grad")].append(_median_time(case.grad, FLAGS.grad_steps))
    print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)

  peak = {k: statistics.median(pk[k] for pk in peaks) for k in peaks[0]}
  print("matmul {n}x{n} GFLOP/s: ".format(n=FLAGS.matmul_size)
        + ", ".join(f"{lib} {dt} {v:.0f}" for (lib, dt), v in sorted(peak.items())))
  flops = {"train": 3 * forward_flops(p, p) * b,
           "grad": 2 * forward_flops(FLAGS.grad_height, FLAGS.grad_width)}
  for job, what in (("train", "train step"), ("grad", "input gradient")):
    print(f"{what} ({flops[job] / 1e9:.1f} GFLOP):")
    for prec in FLAGS.precisions:
      best_peak = max(peak[("tf", prec)], peak[("torch", prec)])
      ref = statistics.median(timings[(("torch NHWC", prec), job)])
      for lib in ("tf", "torch NHWC", "torch NCHW"):
        t = statistics.median(timings[((lib, prec), job)])
        rate = flops[job] / t / 1e9
        print(f"  {lib:10s} {prec:8s} {t:.4f} s  {rate:6.0f} GFLOP/s = "
              f"{100 * rate / best_peak:3.0f} % of the {prec} matmul peak; "
              f"x{t / ref:.2f} the time of torch NHWC", flush=True)
  if FLAGS.profile:
    print("profile of one train step (self time per op type; profilers add overhead, compare "
          "shares):")
    for prec in FLAGS.precisions:
      print_profile(f"tf {prec}", profile_tf_step(cases[("tf", prec)]), FLAGS.profile_top)
      print_profile(f"torch NHWC {prec}", profile_torch_step(cases[("torch NHWC", prec)]),
                    FLAGS.profile_top)


if __name__ == "__main__":
  app.run(main)
