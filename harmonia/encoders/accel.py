"""Opt-in speed options applied to a built encoder: CPU int8 linear layers and `torch.compile`.

`harmonia.load_encoder(source, quantize="int8")` and `load_encoder(source, compile=True)` call
`accelerate` on the encoder they built (any family, any ensemble); neither is ever the default.

**int8 (CPU only).** The linear layers of the transformer blocks (attention projections and MLPs,
where 95+ % of the FLOPs are) are replaced by `Int8Linear`: weights quantised once, symmetric per
output channel; activations quantised on the fly *per token* (each row scaled by its own absolute
maximum), so a token's output never depends on other tokens, batch-mates or padding and the
encoder's batch invariance stays exact; 7-bit activation range as PyTorch's default x86 dynamic
quantisation (safe on CPUs without VNNI); int8 x int8 products with int32 accumulation in fbgemm
(`torch.ops.quantized.linear_dynamic`). fbgemm quantises activations per tensor from their min/max,
so the rows are divided by their maxima and two sentinel rows (+1 and -1) pin that range: every
row then gets the same fixed quantiser. The patch embedding, BEATs' gated relative-position bias
(whose weights are read directly) and everything else stay float32.
`torch.ao.quantization.quantize_dynamic` does the same on torch 2.13 but is deprecated and its
modules keep packed objects in the state dict (which harmonia hashes for its embedding cache), so
we keep plain int8/float tensors as buffers and pack them lazily. GPUs have no such kernels here:
`quantize` with a CUDA device is an error (use dtype=float16/bfloat16 there).

**compile.** Each transformer block is compiled in place with `torch.compile` (identical blocks
share the compiled code); the chunking, masks and front ends stay eager. The first call of every new
input shape pays the compilation (after a few distinct lengths torch marks the shapes dynamic;
past its recompile limit it runs those blocks eagerly), so compile pays off for fixed-length
batches such as X-ARES crops. int8 and compile are not combined.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from harmonia.io import parse_dtype
from harmonia.models.beats import TransformerLayer
from harmonia.models.dasheng import Block

QUANTIZE_MODES = ("int8",)
#: the transformer blocks of every family: what `quantize` and `compile` act on
BLOCK_TYPES: tuple[type[nn.Module], ...] = (TransformerLayer, Block)
#: linear layers inside a block that stay float (their weights are read directly)
KEEP_FLOAT = ("grep_linear",)


def check_options(quantize: str | None = None, compile: bool = False, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None) -> None:
    """Validate the speed options before anything is loaded (a typo must not cost a 5 GB load)."""
    if quantize is not None:
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize={quantize!r}: expected None (the default, float weights) or one of "
                             f"{QUANTIZE_MODES} (dynamic int8 linear layers on CPU)")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"quantize={quantize!r} runs on the CPU only (fbgemm kernels), found device={device!r}; "
                             "on a GPU use dtype=torch.float16 or torch.bfloat16 instead")
        if dtype is not None and parse_dtype(dtype) != torch.float32:
            raise ValueError(f"quantize={quantize!r} quantises float32 weights, found dtype={parse_dtype(dtype)}; "
                             "leave dtype unset (or float32) when quantising")
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise RuntimeError("quantize='int8' needs PyTorch's fbgemm CPU kernels, which this torch build lacks "
                               f"(engines: {torch.backends.quantized.supported_engines})")
    if dtype is not None and parse_dtype(dtype) == torch.float16 and (device is None or torch.device(device).type == "cpu"):
        # CPUs have no fast fp16 matrix products: 0.6 GFLOP/s against 163 (fp32) and 390 (bf16) measured
        # on an AMD EPYC, i.e. a 10 s BEATs-base encode takes minutes
        warnings.warn("dtype=float16 on the CPU is very slow (CPUs lack fast fp16 matrix products); use float32, "
                      "bfloat16 on a CPU with native bf16, or pass device='cuda' to load_encoder for a GPU",
                      stacklevel=3)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, found {compile!r}")
    if quantize is not None and compile:
        # the fbgemm int8 ops are opaque to the compiler, and inductor's rewrite of the per-token
        # scaling moved int8 outputs by up to 5e-2 against eager in a trial: not offered
        raise ValueError(f"quantize={quantize!r} and compile=True cannot be combined; choose one (int8 for CPU "
                         "speed, compile for GPU speed)")


def accelerate(encoder: nn.Module, quantize: str | None = None, compile: bool = False) -> nn.Module:
    """Apply the speed options to a built encoder in place and return it."""
    check_options(quantize, compile)
    if quantize is not None:
        quantize_int8(encoder)
    if compile:
        compile_blocks(encoder)
    return encoder


def _blocks(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, BLOCK_TYPES)]


def quantize_int8(encoder: nn.Module) -> nn.Module:
    """Replace the linear layers of every transformer block by `Int8Linear` (in place)."""
    blocks = _blocks(encoder)
    if not blocks:
        raise ValueError(f"quantize='int8': {type(encoder).__name__} holds no BEATs or Dasheng transformer "
                         "block to quantise")
    for block in blocks:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and name not in KEEP_FLOAT:
                    if child.weight.device.type != "cpu" or child.weight.dtype != torch.float32:
                        raise ValueError(f"quantize='int8' needs float32 weights on the CPU, found "
                                         f"{child.weight.dtype} on {child.weight.device}; load without dtype/device")
                    setattr(parent, name, Int8Linear.from_linear(child))
    return encoder


def compile_blocks(encoder: nn.Module) -> nn.Module:
    """`torch.compile` every transformer block in place (nn.Module.compile)."""
    blocks = _blocks(encoder)
    if not blocks:
        raise ValueError(f"compile=True: {type(encoder).__name__} holds no BEATs or Dasheng transformer block")
    for block in blocks:
        block.compile()
    return encoder


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W in int8 (symmetric, one scale per output channel) and x quantised to
    int8 on the fly, one scale per row. Buffers: `weight_int8` (out, in) int8, `weight_scale`
    (out,) float32, `bias` (out,) float32 or None. Input and output float32, any leading shape."""

    def __init__(self, weight_int8: Tensor, weight_scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_int8.shape[1], weight_int8.shape[0]
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self._packed = None  # fbgemm's packed weight, built on first use (not part of the state)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        w_int8 = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(w_int8, scale, bias)

    def _pack(self):
        # keyed by storage (no `_version`: inference tensors have none); load_state_dict resets it
        key = (self.weight_int8.data_ptr(), self.weight_scale.data_ptr())
        if self._packed is None or self._packed[0] != key:
            with warnings.catch_warnings():  # quantized-tensor constructors warn of a future removal
                warnings.simplefilter("ignore")
                zero = torch.zeros(self.out_features, dtype=torch.long)
                qweight = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(),
                                                                   zero, 0)
                self._packed = (key, torch.ops.quantized.linear_prepack(qweight, None))
        return self._packed[1]

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("Int8Linear runs on the CPU only; load the encoder without quantize for a GPU")
        x_MK = x.reshape(-1, self.in_features).float()
        M = x_MK.shape[0]
        # max |x| per row from two reductions (no |x| temporary; vector_norm(inf) is slower here)
        row_max_M1 = torch.maximum(x_MK.amax(1, keepdim=True), x_MK.amin(1, keepdim=True).neg_()).clamp_(min=1e-30)
        rows = x_MK.new_empty(M + 2, self.in_features)
        torch.div(x_MK, row_max_M1, out=rows[:M])  # every row now spans at most [-1, 1]
        rows[M], rows[M + 1] = 1.0, -1.0  # sentinels: fbgemm's per-tensor range is exactly [-1, 1]
        # reduce_range=True: 7-bit activations, as PyTorch's x86 default (no int16 overflow without VNNI)
        y_MN = torch.ops.quantized.linear_dynamic(rows, self._pack(), True)[:M]
        y_MN = y_MN * row_max_M1 if self.bias is None else torch.addcmul(self.bias, y_MN, row_max_M1)
        return y_MN.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"
