"""The models that the training benchmark times, one runner per framework.

A runner builds one model of one configuration (a dict; see
`train_benchmark.py`), with a fixed random batch, and offers:

- `flops`: forward FLOPs of one image for the training graph;
- `params`: its parameter count;
- `train_step()`: one optimizer step on the batch, blocking until done;
- `infer_modes`: `{mode: (callable, forward FLOPs per image)}`, each callable
  one blocking forward pass in inference mode;
- `reference()`: one large float32 matmul, blocking, and its FLOPs; the
  benchmark reads the machine's peak off it, in the same process and round
  as the steps it is compared with;
- `memory_peak()`: the framework allocator's peak bytes since the last
  `reset_memory()`, or `None` where the framework does not tell.

Everything framework-specific is imported inside the builders, so that this
module loads in any of the benchmark's interpreters (the main virtual
environment, or the peers' one).
"""

import os

import numpy as np

# FLOPs are counted the same way for every framework: 2 per multiply-add of
# the convolutions and transposed convolutions, plus the bias additions.


def _spatial(config):
    """The spatial shape of one input: a square image or a cubic volume."""
    return (config["size"],) * config.get("spatial_dims", 2)


def _batch(config):
    rng = np.random.default_rng(0)
    shape = (config["batch"], *_spatial(config), 1)
    x = rng.standard_normal(shape).astype("float32")
    y = (rng.random(shape) < 0.3).astype("float32")
    return x, y


class KerasRunner:
    """Keras 3 (TensorFlow backend) models: keras_unetpp and keras-unet-collection."""

    def __init__(self, config):
        import memory

        # Before the first TensorFlow op: allocator statistics without oneDNN too.
        memory.enable_allocator_stats()
        import keras
        import tensorflow as tf

        self.tf = tf
        self._memory = memory
        if config["impl"] == "keras_unetpp":
            from keras_unetpp.precision import check_precision_runs

            # bfloat16 under a oneDNN cap below AVX512_CORE: a clear reason
            # for the skipped row instead of TensorFlow's kernel error.
            check_precision_runs(config["precision"])
        keras.config.set_dtype_policy(config["precision"])
        try:
            model, heads = self._build(config)
        finally:
            keras.config.set_dtype_policy("float32")
        x, y = _batch(config)
        self.x = tf.constant(x)
        outputs = model.outputs
        if isinstance(model.output, dict):
            targets = {name: tf.constant(y) for name in model.output}
            losses = {name: "binary_crossentropy" for name in model.output}
        elif len(outputs) > 1:
            targets = [tf.constant(y) for _ in outputs]
            losses = ["binary_crossentropy"] * len(outputs)
        else:
            targets, losses = tf.constant(y), "binary_crossentropy"
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=losses,
            jit_compile=bool(config.get("xla", False)),
        )
        self.model, self.y = model, targets
        self.params = model.count_params()
        self.flops = self._flops(model, config)
        if not config.get("infer", True):
            heads = {}
        xla = bool(config.get("xla", False))
        self.infer_modes = {
            mode: (self._predictor(m, xla), self._flops(m, config))
            for mode, m in heads.items()
        }
        self._ref = self._matmul(config.get("ref_size", 3072))

    def _build(self, config):
        impl = config["impl"]
        if impl == "keras_unetpp":
            import keras

            import keras_unetpp

            depth = config["depth"]
            model = keras_unetpp.build(
                depth,
                (*_spatial(config), 1),
                deep_supervision=config["deep_supervision"],
                **config.get("build_kwargs", {}),
            )
            if config.get("batch_norm") == "keras":
                # Keras' own batch-norm computation: a clone is rebuilt from
                # the layer configs, without `fuse_batch_norm`.
                plain = keras.models.clone_model(model)
                plain.set_weights(model.get_weights())
                model = plain
            if config.get("recompute"):
                keras_unetpp.recompute_nodes(model)
            if config["deep_supervision"]:
                heads = {"accurate": keras_unetpp.inference_model(model)}
                for level in range(depth, 0, -1):
                    heads[f"L{level}"] = keras_unetpp.prune(model, level)
            else:
                heads = {f"L{depth}": model}
            return model, heads
        if impl == "kuc":
            from keras_unet_collection import models

            size, depth = config["size"], config["depth"]
            model = models.unet_plus_2d(
                (size, size, 1),
                [32 * 2**i for i in range(depth + 1)],
                n_labels=1,
                stack_num_down=2,
                stack_num_up=2,
                activation="ReLU",
                output_activation="Sigmoid",
                batch_norm=True,
                pool="max",
                unpool=False,
                deep_supervision=config["deep_supervision"],
                name="xnet",
            )
            return model, {"last": model}
        raise ValueError(f"Unknown Keras implementation. Received: impl={impl!r}")

    @staticmethod
    def _flops(model, config):
        if config["impl"] == "keras_unetpp":
            import keras_unetpp

            size = config["size"]
            depth = size if config.get("spatial_dims", 2) == 3 else None
            return keras_unetpp.count_flops(model, size, size, depth=depth)
        return keras_conv_flops(model)

    def _predictor(self, model, xla):
        tf = self.tf
        call = tf.function(lambda x: model(x, training=False), jit_compile=xla)

        def run():
            out = call(self.x)
            # Block until computed: fetch one value of the (first) output.
            first = out if tf.is_tensor(out) else tf.nest.flatten(out)[0]
            return float(tf.reshape(first, [-1])[0])

        return run

    def _matmul(self, n):
        tf = self.tf
        if not n:
            return (lambda: 0.0), 0
        a = tf.random.normal((n, n), seed=1)
        b = tf.random.normal((n, n), seed=2)
        call = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
        call()
        return call, 2 * n**3

    def peaks(self, repeats=3):
        """Best GFLOP/s of a float32 and a bfloat16 reference-size matmul."""
        import time

        tf = self.tf
        n = self._ref[1] and round((self._ref[1] / 2) ** (1 / 3))
        if not n:
            return {}
        result = {}
        dtypes = ["float32"]
        # oneDNN capped below its AVX-512 BF16 kernels (ONEDNN_MAX_CPU_ISA=AVX2,
        # as on an AVX2 CPU) aborts the process on a bfloat16 matmul
        # ("could not create a primitive"), uncatchable from Python.
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        if not isa or "BF16" in isa or "AMX" in isa or isa == "ALL":
            dtypes.append("bfloat16")
        for dtype in dtypes:
            a = tf.cast(tf.random.normal((n, n), seed=1), dtype)
            b = tf.cast(tf.random.normal((n, n), seed=2), dtype)
            call = tf.function(lambda a=a, b=b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
            float(call())
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                float(call())
                best = min(best, time.perf_counter() - start)
            result[f"{dtype}_matmul_gflops"] = 2 * n**3 / best / 1e9
        return result

    def train_step(self):
        self.model.train_on_batch(self.x, self.y)

    def reference(self):
        call, flops = self._ref
        float(call())
        return flops

    def reset_memory(self):
        self._memory.reset_peak("CPU:0")

    def memory_peak(self):
        return self._memory.memory_info("CPU:0")["peak"]


def keras_conv_flops(model):
    """Forward FLOPs of one image of a Keras model with a static input size."""
    flops = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "Conv2DTranspose"):
            continue
        kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
        shape = layer.input.shape if kind == "Conv2DTranspose" else layer.output.shape
        positions = int(shape[1]) * int(shape[2])
        flops += 2 * kh * kw * cin * cout * positions
        if layer.use_bias:
            out = layer.output.shape
            flops += int(out[1]) * int(out[2]) * cout
    return flops


class TorchRunner:
    """MONAI's BasicUNetPlusPlus on PyTorch (CPU), widths as keras_unetpp's.

    2D or 3D (`config["spatial_dims"]`), batch norm, transposed-convolution
    up-sampling, as keras_unetpp's default build.
    """

    def __init__(self, config):
        import torch
        from monai.networks.nets import BasicUNetPlusPlus

        if config["depth"] != 4:
            raise ValueError(
                f"MONAI's BasicUNetPlusPlus has depth 4 only. "
                f"Received: depth={config['depth']}"
            )
        self.torch = torch
        torch.manual_seed(0)
        dims = config.get("spatial_dims", 2)
        model = BasicUNetPlusPlus(
            spatial_dims=dims,
            in_channels=1,
            out_channels=1,
            features=(32, 64, 128, 256, 512, 32),
            deep_supervision=config["deep_supervision"],
            act="relu",
            norm="batch",
            upsample="deconv",
        )
        x, y = _batch(config)
        # PyTorch convolutions take channels first (NCHW, NCDHW).
        order = (0, dims + 1, *range(1, dims + 1))
        self.x = torch.from_numpy(np.ascontiguousarray(x.transpose(order)))
        self.y = torch.from_numpy(np.ascontiguousarray(y.transpose(order)))
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.loss = torch.nn.BCEWithLogitsLoss()
        self.autocast = config["precision"] != "float32"
        self.params = sum(p.numel() for p in model.parameters())
        self.flops = self._count_flops()
        self.infer_modes = {}
        if config.get("infer", True):
            self.infer_modes["last"] = (self._infer, self.flops)
        n = config.get("ref_size", 3072)
        self._a = torch.randn(n, n)
        self._b = torch.randn(n, n)
        self._ref_flops = 2 * n**3

    def _count_flops(self):
        torch = self.torch
        flops = []

        transposed = (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)

        def hook(module, inputs, output):
            w = module.weight
            taps = int(np.prod(w.shape[2:]))
            out_positions = int(np.prod(output.shape[2:]))
            if isinstance(module, transposed):
                positions = int(np.prod(inputs[0].shape[2:]))
                cin, cout = w.shape[0], w.shape[1]
            else:
                positions = out_positions
                cout, cin = w.shape[0], w.shape[1]
            total = 2 * taps * cin * cout * positions
            if module.bias is not None:
                total += out_positions * cout
            flops.append(int(total))

        kinds = (torch.nn.Conv2d, torch.nn.Conv3d, *transposed)
        handles = [
            m.register_forward_hook(hook)
            for m in self.model.modules()
            if isinstance(m, kinds)
        ]
        self.model.train()
        with torch.no_grad():
            self.model(self.x[:1])
        for handle in handles:
            handle.remove()
        return sum(flops)

    def train_step(self):
        torch = self.torch
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(self.x)
        loss = sum(self.loss(o.float(), self.y) for o in out)
        loss.backward()
        self.optimizer.step()

    def _infer(self):
        torch = self.torch
        self.model.eval()
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast),
        ):
            out = self.model(self.x)
        return float(out[-1].reshape(-1)[0])

    def reference(self):
        if self._ref_flops:
            float(self.torch.matmul(self._a, self._b)[0, 0])
        return self._ref_flops

    def reset_memory(self):
        pass

    def memory_peak(self):
        return None


def make_runner(config):
    """The runner of `config["impl"]`: keras_unetpp, kuc or monai."""
    if config["impl"] == "monai":
        return TorchRunner(config)
    return KerasRunner(config)
