"""medqlora/compat.py: each library internal medqlora relies on, one test each, failing when the library changes.

Named `test_compat_<function or constant>`; each checks the behaviour medqlora needs, not only that a name exists.
"""

from __future__ import annotations

import inspect

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from medqlora import compat


def _fit(tmp_path, callbacks, max_steps: int = -1, accumulate: int = 3, batches: int = 7, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        max_steps=max_steps,
        limit_train_batches=batches,
        limit_val_batches=0,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(BoringModel(), datamodule=BoringDataModule())
    return trainer


def test_compat_optimizer_step_done(tmp_path):
    """At every micro-batch's end it says whether that micro-batch stepped the optimizer, counting the epoch's last,
    partial window (7 micro-batches at accumulation 3: steps after 3, 6 and 7)."""

    class Record(Callback):
        def __init__(self):
            self.done, self.stepped = [], []

        def on_train_batch_start(self, trainer, *args):
            self.before = trainer.global_step

        def on_train_batch_end(self, trainer, *args):
            self.done.append(compat.optimizer_step_done(trainer))
            self.stepped.append(trainer.global_step > self.before)

    record = Record()
    _fit(tmp_path, [record])
    assert record.done == record.stepped == [False, False, True, False, False, True, True]


def test_compat_restore_logging_step(tmp_path):
    """A checkpoint holds the loop's logging counter where restore_logging_step writes it, and Lightning's progress
    counters it reads; a resumed run then logs from the checkpoint's step."""
    trainer = _fit(tmp_path, [], accumulate=1, batches=4)
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    fit_loop = checkpoint["loops"]["fit_loop"]
    assert "_batches_that_stepped" in fit_loop["epoch_loop.state_dict"]
    total = fit_loop["epoch_loop.batch_progress"]["total"]
    assert {"completed", "processed"} <= set(total)
    fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] = -1
    compat.restore_logging_step(checkpoint)
    assert fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] == checkpoint["global_step"] == 4
    torch.save(checkpoint, path)
    resumed = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    resumed.fit(BoringModel(), datamodule=BoringDataModule(), ckpt_path=path)
    assert resumed.fit_loop.epoch_loop._batches_that_stepped == resumed.global_step == 6


def test_compat_CkptPathCLI(tmp_path):
    """LightningCLI runs `_parse_ckpt_path` (the subclass's `check_ckpt_path`) once, after parsing a subcommand."""
    calls = []

    class CLI(compat.CkptPathCLI):
        def check_ckpt_path(self) -> None:
            calls.append(self.config.get("subcommand"))

    args = ["fit", "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    CLI(BoringModel, BoringDataModule, args=args)
    assert calls == ["fit"]


def test_compat_ExistingMetricsWriter_and_CSVLoggerWith(tmp_path):
    """The writer's check for an existing log directory runs from its constructor (Lightning's would delete an
    existing metrics.csv), and CSVLoggerWith builds its writer from `writer_class`."""
    found = []

    class Writer(compat.ExistingMetricsWriter):
        def found_log_dir(self) -> None:
            found.append((self.log_dir, (tmp_path / "x" / "version_0" / "metrics.csv").is_file()))

    class Logger(compat.CSVLoggerWith):
        writer_class = Writer

    (tmp_path / "x" / "version_0").mkdir(parents=True)
    (tmp_path / "x" / "version_0" / "metrics.csv").write_text("step,loss\n0,1.0\n")
    logger = Logger(save_dir=tmp_path, name="x", version=0)
    assert isinstance(logger.experiment, Writer) and logger.experiment is logger.experiment
    assert found == [(str(tmp_path / "x" / "version_0"), True)]


def test_compat_fsdp_root_unset():
    """FSDP marks a unit's root status None until lazy initialisation; the check reads that attribute."""
    import torch.distributed.fsdp._init_utils as init_utils

    assert "state._is_root = None" in inspect.getsource(init_utils)
    unit = torch.nn.Linear(2, 2)
    unit._is_root = None
    assert compat.fsdp_root_unset(unit)
    unit._is_root = True
    assert not compat.fsdp_root_unset(unit)


def test_compat_raise_recompile_limit():
    config = torch._dynamo.config
    name = next(n for n in compat.RECOMPILE_LIMIT_NAMES if hasattr(config, n))
    before = getattr(config, name)
    try:
        compat.raise_recompile_limit(before + 5)
        assert getattr(config, name) == before + 5
        compat.raise_recompile_limit(1)  # never lowers it
        assert getattr(config, name) == before + 5
    finally:
        setattr(config, name, before)


def test_compat_replace_forward():
    """A module's call goes through the replacement, with its forward hooks still run."""
    linear = torch.nn.Linear(2, 2)
    seen = []
    linear.register_forward_hook(lambda module, args, out: seen.append("hook"))
    compat.replace_forward(linear, lambda x: x * 3)
    assert torch.equal(linear(torch.ones(1, 2)), torch.full((1, 2), 3.0)) and seen == ["hook"]


def test_compat_grad_norms_and_zero_all():
    tensors = [torch.randn(3, 4), torch.randn(7)]
    norms = compat.grad_norms(tensors)
    assert all(torch.allclose(n, torch.linalg.vector_norm(t)) for n, t in zip(norms, tensors))
    first = tensors[0]
    compat.zero_all(tensors)
    assert tensors[0] is first and all(bool((t == 0).all()) for t in tensors)


def _tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)


def _tiny_text(tiny_dir):
    from medqlora.model.parts import text_model

    return text_model(_tiny_model(tiny_dir))


def test_compat_flash_varlen():
    """The op takes the arguments flash_varlen passes (the kernel itself runs on a GPU only: the benchmark's check)."""
    schema = torch.ops.aten._flash_attention_forward.default._schema
    names = [a.name for a in schema.arguments]
    assert names[:10] == ["query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p",
                          "is_causal", "return_debug_mask"]  # fmt: skip
    assert {"scale", "window_size_left", "window_size_right"} <= set(names)
    assert schema.returns[0].type.kind() == "TensorType"  # the output first


def test_compat_own_forward_and_decoder_layer_class(tiny_dir):
    """The decoder layer class is where medqlora imports it from, and its unwrapped forward is the layer's own (it
    takes the hidden states and the per-layer input), not transformers' checkpointing wrapper."""
    text = _tiny_text(tiny_dir)
    layer_class = compat.decoder_layer_class()
    assert all(isinstance(layer, layer_class) for layer in text.layers)
    forward = compat.own_forward(layer_class)
    assert forward.__qualname__ == f"{layer_class.__name__}.forward"
    assert list(inspect.signature(forward).parameters)[:3] == ["self", "hidden_states", "per_layer_input"]


def test_compat_rms_norm_eps(tiny_dir):
    """Every RMSNorm of the text model gives the config's epsilon, whichever attribute this release keeps it in."""
    text = _tiny_text(tiny_dir)
    norms = [m for m in text.modules() if type(m).__name__ == "Gemma4RMSNorm"]
    assert norms and {compat.rms_norm_eps(m) for m in norms} == {text.config.rms_norm_eps}


def test_compat_enable_activation_checkpointing(tiny_dir):
    from medqlora.model.parts import text_model

    model = _tiny_model(tiny_dir)
    compat.enable_activation_checkpointing(model, {"use_reentrant": False})

    assert all(layer.gradient_checkpointing for layer in text_model(model).layers)


def test_compat_cache_kwarg_and_CACHE_METHODS(tiny_dir):
    """The text model takes a cache under `cache_kwarg`'s name and, given positions and tensor masks, calls only the
    methods in CACHE_METHODS on it, and reads CACHE_OPTIONAL's attributes only where it has a default (eval/decode.py's
    StaticCache implements just CACHE_METHODS)."""
    from medqlora.model.masks import cache_masks

    text = _tiny_text(tiny_dir)
    called = []

    class Recorder:
        def __getattr__(self, name):
            called.append(name)
            if name == "update":
                return lambda key, value, layer_idx, *args, **kwargs: (key, value)
            raise AttributeError(name)

    ids = torch.randint(4, 100, (1, 5))
    masks = cache_masks(torch.arange(5), torch.zeros(1, dtype=torch.long), 5, text.config.sliding_window)
    name = compat.cache_kwarg(text)
    assert name in inspect.signature(text.forward).parameters
    with torch.no_grad():
        text(
            input_ids=ids,
            position_ids=torch.arange(5)[None],
            attention_mask=masks,
            use_cache=True,
            **{name: Recorder()},
        )
    assert "update" in called and set(called) <= {*compat.CACHE_METHODS, *compat.CACHE_OPTIONAL}, called


def test_compat_keep_4bit_layout():
    """bitsandbytes' 4-bit linear carries the switch and its forward reads it; keep_4bit_layout turns it off."""
    import bitsandbytes as bnb

    linear = bnb.nn.Linear4bit(64, 64)
    assert "support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit.forward)
    linear.support_avx512bf16_for_cpu = True  # as on a CPU with AVX512-BF16
    assert compat.keep_4bit_layout(torch.nn.Sequential(linear)) == 1
    assert linear.support_avx512bf16_for_cpu is False


def test_compat_adamw8bit_without_syncs():
    """The copy's step is bitsandbytes' own minus the sync per tensor: bitsandbytes' step still calls what the copy
    calls, in that order, and its one extra call for unpaged state does nothing. (tests/model/test_optimizer.py holds
    the two to the same weights and state, step for step.)"""
    import bitsandbytes.optim.optimizer as bnb_optimizer

    theirs = inspect.getsource(bnb_optimizer.Optimizer8bit.step)
    calls = [
        "self.check_overrides()",
        "self.to_gpu()",
        "self.init_state(group, p, gindex, pindex)",
        "self.prefetch_state(p)",
        "self.update_step(group, p, gindex, pindex)",
        "sync_gpu(p)",
    ]
    positions = [theirs.find(call) for call in calls]
    assert -1 not in positions and positions == sorted(positions), dict(zip(calls, positions))
    assert "if self.is_paged" in inspect.getsource(bnb_optimizer.Optimizer8bit.prefetch_state)
    ours = compat.adamw8bit_without_syncs()
    assert issubclass(ours, bnb_optimizer.Optimizer8bit) and "sync_gpu" not in inspect.getsource(ours.step)


def test_compat_activation_memory_budget():
    from torch._functorch import config

    before = config.activation_memory_budget
    with compat.activation_memory_budget(0.4):
        assert config.activation_memory_budget == 0.4
    assert config.activation_memory_budget == before  # what the partitioner does with it: test_checkpointing.py


def test_compat_count_grouped_query_attention(monkeypatch):
    """Under torch 2.11's counter (equal heads asserted, simulated here) grouped-query attention counts as the same
    attention with its key/value heads repeated; the registered formulas find the replacement by name."""
    from torch.utils import flop_counter

    real = flop_counter.sdpa_flop_count

    def equal_heads_only(query_shape, key_shape, value_shape):
        if not query_shape[1] == key_shape[1] == value_shape[1]:
            raise AssertionError("sdpa_flop_count: query/key/value shapes are incompatible")
        return real(query_shape, key_shape, value_shape)

    monkeypatch.setattr(flop_counter, "sdpa_flop_count", equal_heads_only)
    monkeypatch.setattr(flop_counter, "sdpa_backward_flop_count", flop_counter.sdpa_backward_flop_count)
    # meta tensors: only shapes, as the partitioner's estimate runs an op (the CPU's SDPA has no formula)
    q, kv = torch.empty(1, 4, 8, 16, device="meta"), torch.empty(1, 1, 8, 16, device="meta")

    def counted(key) -> int:
        with flop_counter.FlopCounterMode(display=False) as mode:
            torch.ops.aten._scaled_dot_product_flash_attention(q, key, key)
        return mode.get_total_flops()

    try:
        counted(kv)
        raise RuntimeError("the simulated counter was not used")
    except AssertionError:
        pass
    compat.count_grouped_query_attention()
    assert counted(kv) == counted(kv.expand(1, 4, 8, 16)) > 0


def test_compat_keep_uncounted_ops(monkeypatch):
    """An op torch's FLOP estimate fails on (row attention's fp32-output bmm on a GPU: `bmm_flop() got multiple values
    for argument 'out_shape'` in torch 2.11 and 2.13) is priced as never worth recomputing instead of failing the
    compilation; the partitioner calls the estimate by its module-level name."""
    from torch._functorch import partitioners

    # torch's own estimate, also where an earlier test installed the wrapper (process-wide); both undone after the test
    monkeypatch.setattr(partitioners, "estimate_runtime", inspect.unwrap(partitioners.estimate_runtime))
    monkeypatch.setattr(compat, "UNCOUNTED_OPS", set())
    assert "estimate_runtime(node)" in inspect.getsource(partitioners)
    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    a.meta["val"] = torch.empty(2, 8, 4, device="meta", dtype=torch.bfloat16)
    b.meta["val"] = torch.empty(2, 4, 8, device="meta", dtype=torch.bfloat16)
    node = graph.call_function(torch.ops.aten.bmm.dtype, (a, b, torch.float32))
    try:
        partitioners.estimate_runtime(node)
        failed = False
    except Exception:  # noqa: BLE001
        failed = True
    compat.keep_uncounted_ops()
    cost = partitioners.estimate_runtime(node)
    assert cost >= 1e18 if failed else cost >= 1
    assert ("aten.bmm.dtype" in compat.UNCOUNTED_OPS) == failed
