"""Book-keeping DP-SGD (`dp.grad_sample: bookkeeping`; Bu et al. 2023, "Differentially private
optimization on large model at small cost"): the clipped gradient sum without Opacus' per-sample
gradient tensors where a layer's formula makes them unnecessary.

With Opacus' hooks, each backward pass computes the ordinary batch gradient of every weight,
then a B x weight per-sample gradient per layer, then the clipped sum that replaces the batch
gradient. Here each layer keeps what its hooks see, its input `a` and the gradient `g` of its
output, for every call in the step, and the optimizer asks each layer for two things: every
record's squared gradient norm, then, once the clip factors c_i = min(1, C / ||grad_i||) of all
layers are known, the clipped sum sum_i c_i grad_i in one batched operation. The noise, the
division by the expected batch size, the step hook and the accounting are Opacus' DPOptimizer's.

Per layer type (a layer called several times in a step, an RNN cell or a discriminator on real,
fake and rotated images, contributes every call to the same record's gradient, as with hooks):

- Linear (and Opacus' RNNLinear): the record's gradient is G_i^T A_i over its positions (calls
  and sequence positions stacked, T of them). Its norm comes from the Gram matrices,
  ||G_i^T A_i||^2 = <A_i A_i^T, G_i G_i^T> (ghost norm, Goodfellow 2015; Li et al. 2022), when
  T^2 (d + p) < d p, so the clipped sum is one matmul (c G)^T A; otherwise from the record's
  gradient itself, which then gives the clipped sum by a weighted sum over records.
- Conv1d / Conv2d: the Linear formula over the input patches (ghost norm) where few output
  positions meet wide channels, T (k + p) < k p for T positions and k kernel inputs; otherwise
  every record's gradient in one grouped convolution (the records as groups), the kernel torch
  uses for the batch weight gradient, instead of unfolding the input.
- GroupNorm, LayerNorm: the records' gradients are small (one value per channel); exact formulas.
- Embedding: with a table larger than T^2 rows, the norm from which positions share a token
  (ghost norm) and the clipped sum by an index_add of the scaled output gradients; a smaller
  table is scattered into each record's gradient. As in Opacus' grad sampler, rows at `padding_idx`
  count like any other row, so the two modes release the same gradient.
- Any other layer with parameters: Opacus' own per-sample gradient (its grad sampler for the
  layer type, or torch.func), so the clipping stays exact; it is never skipped.

Autograd's own weight gradient of a Linear or Conv layer is wasted under DP-SGD (the clipped sum
replaces it), so where the layer's input needs a gradient anyway the weight is taken out of the
autograd graph for the call, and only the input gradient is computed.

Records are summed over every backward pass between two optimizer steps (one sampled batch, as
the accountant counts it); Opacus' hooks instead treat a second backward pass as more records.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample.functorch import prepare_layer
from opacus.layers.dp_rnn import DPGRU, DPLSTM, DPRNN, RNNLinear
from opacus.optimizers import DPOptimizer
from torch import nn

# One contribution of a layer to the clipped sum: the records' squared norms of its part of the
# gradient, and the function that turns clip factors into the clipped sum of that part.
Part = tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _materialized(per_record: torch.Tensor) -> Part:
    flat = per_record.reshape(len(per_record), math.prod(per_record.shape[1:]))  # also for no records
    return torch.linalg.vector_norm(flat, dim=1).square(), lambda c: (c @ flat).view(per_record.shape[1:])


def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of records a call did not see (a shorter batch) are zeros."""
    if len(t) == n:
        return t
    return torch.cat([t, t.new_zeros((n - len(t), *t.shape[1:]))])


def _positions(per_call: list[torch.Tensor]) -> torch.Tensor:
    """The calls' positions side by side (records, positions, ...); one call as it is."""
    return per_call[0] if len(per_call) == 1 else torch.cat(per_call, 1)


def _add(total: Optional[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    return t if total is None else total + t


def _ghost(a: torch.Tensor, g: torch.Tensor, shape: torch.Size) -> Part:
    """A weight whose record i gradient is G_i^T A_i (positions by inputs, positions by outputs):
    the norms from the Gram matrices, the clipped sum by one matmul."""
    gram = torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))
    return (
        gram.sum((1, 2)).clamp(min=0),
        lambda c: ((g * c[:, None, None]).reshape(-1, g.shape[2]).T @ a.reshape(-1, a.shape[2])).view(shape),
    )


def _linear(layer: nn.Linear, calls: list, n: int) -> dict:
    a = _positions([_pad(x.reshape(len(x), -1, x.shape[-1]), n) for x, _ in calls])
    g = _positions([_pad(y.reshape(len(y), -1, y.shape[-1]), n) for _, y in calls])
    a = a.to(g.dtype)
    t, d, p = a.shape[1], a.shape[2], g.shape[2]
    out = {}
    if layer.weight.requires_grad:
        # Each record's gradient costs t d p and is then read once; the Gram matrices cost
        # t^2 (d + p) on top of the clipped sum's t d p.
        if t * t * (d + p) < d * p:
            out[layer.weight] = _ghost(a, g, layer.weight.shape)
        else:
            out[layer.weight] = _materialized(torch.bmm(g.transpose(1, 2), a))
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = _materialized(g.sum(1))
    return out


def _patches(layer: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input patches each output position reads: (records, positions, inputs of the kernel)."""
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        options = {"padding": (0, *layer.padding), "stride": (1, *layer.stride), "dilation": (1, *layer.dilation)}
        kernel = (1, *layer.kernel_size)
    else:
        options = {"padding": layer.padding, "stride": layer.stride, "dilation": layer.dilation}
        kernel = layer.kernel_size
    return F.unfold(x, kernel, **options).transpose(1, 2)


def _conv(layer: nn.Conv1d | nn.Conv2d, calls: list, n: int) -> dict:
    out = {}
    if layer.bias is not None and layer.bias.requires_grad:
        bias = None
        for _, y in calls:
            bias = _add(bias, _pad(y.flatten(2).sum(2), n))
        out[layer.bias] = _materialized(bias)
    if not layer.weight.requires_grad:
        return out
    positions = sum(y[0, 0].numel() for _, y in calls)
    k, p = layer.weight[0].numel(), layer.weight.shape[0]
    # Few output positions and wide channels (the U-Net's 4x4 latents): the Gram matrices cost
    # less than the grouped convolution below, which is slow there.
    if layer.groups == 1 and positions * (k + p) < k * p:
        a = _positions([_pad(_patches(layer, x.to(y.dtype)), n) for x, y in calls])
        g = _positions([_pad(y.flatten(2).transpose(1, 2), n) for _, y in calls])
        out[layer.weight] = _ghost(a, g, layer.weight.shape)
        return out
    weight_of = torch.nn.grad.conv1d_weight if isinstance(layer, nn.Conv1d) else torch.nn.grad.conv2d_weight
    per_record = None
    for x, y in calls:
        b = len(x)
        # Records stacked on the channel axis and convolved as groups: record i's weight
        # gradient, for all records at once.
        w = weight_of(
            x.to(y.dtype).reshape(1, -1, *x.shape[2:]),
            (b * p, *layer.weight.shape[1:]),
            y.reshape(1, -1, *y.shape[2:]),
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=b * layer.groups,
        )
        per_record = _add(per_record, _pad(w.view(b, *layer.weight.shape), n))
    out[layer.weight] = _materialized(per_record)
    return out


def _norm_layer(normalized: Callable[[torch.Tensor], torch.Tensor], channel_sum: Callable) -> Callable:
    def parts(layer: nn.Module, calls: list, n: int) -> dict:
        weight, bias = None, None
        for x, y in calls:
            if layer.weight is not None and layer.weight.requires_grad:
                weight = _add(weight, _pad(channel_sum(layer, normalized(layer, x.to(y.dtype)) * y), n))
            if layer.bias is not None and layer.bias.requires_grad:
                bias = _add(bias, _pad(channel_sum(layer, y), n))
        out = {}
        if layer.weight is not None and layer.weight.requires_grad:
            out[layer.weight] = _materialized(weight)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = _materialized(bias)
        return out

    return parts


_group_norm = _norm_layer(
    lambda layer, x: F.group_norm(x, layer.num_groups, eps=layer.eps),
    lambda layer, t: t.reshape(len(t), t.shape[1], -1).sum(2),
)
_layer_norm = _norm_layer(
    lambda layer, x: F.layer_norm(x, layer.normalized_shape, eps=layer.eps),
    lambda layer, t: t.reshape(len(t), -1, *layer.normalized_shape).sum(1),
)


def _embedding(layer: nn.Embedding, calls: list, n: int) -> dict:
    if not layer.weight.requires_grad:
        return {}
    ids = _positions([_pad(x.reshape(len(x), -1), n) for x, _ in calls])
    g = _positions([_pad(y.reshape(len(y), -1, y.shape[-1]), n) for _, y in calls])
    vocab, t = layer.weight.shape[0], ids.shape[1]
    if vocab <= t * t:
        # A small table: each record's gradient (the scatter of its positions' g into their rows).
        per_record = torch.zeros((n, *layer.weight.shape), device=g.device, dtype=g.dtype)
        per_record.scatter_add_(1, ids[:, :, None].expand(-1, -1, g.shape[-1]), g)
        return {layer.weight: _materialized(per_record)}
    # Positions holding the same token add up in the token's row: ||grad_i||^2 is the sum of
    # <g_t, g_s> over the pairs of positions t, s with the same token. Padded rows have g = 0.
    same = ids[:, :, None] == ids[:, None, :]
    sq = (torch.bmm(g, g.transpose(1, 2)) * same).sum((1, 2)).clamp(min=0)

    def clipped(c: torch.Tensor) -> torch.Tensor:
        rows = (g * c[:, None, None]).reshape(-1, g.shape[-1])
        return torch.zeros_like(layer.weight, dtype=g.dtype).index_add_(0, ids.reshape(-1), rows)

    return {layer.weight: (sq, clipped)}


def formula(module: nn.Module) -> Optional[Callable]:
    """The book-keeping formula for this layer, or None (Opacus' per-sample gradients then)."""
    kind = type(module)
    if kind in (nn.Linear, RNNLinear):
        return _linear
    if kind in (nn.Conv1d, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return None
        return _conv
    if kind is nn.GroupNorm:
        return _group_norm
    if kind is nn.LayerNorm:
        return _layer_norm
    if kind is nn.Embedding:
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            return None
        return _embedding
    return None


# Layers whose weight gradient autograd can skip: the clipped sum computes it instead.
_SKIP_WEIGHT_GRAD = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


class BookkeepingGradSampleModule(GradSampleModule):
    """A GradSampleModule whose layers with a book-keeping formula keep (input, output gradient)
    per call instead of computing per-sample gradients; the rest use Opacus' hooks as they are.

    Pair it with `BookkeepingDPOptimizer`, which reads what the layers kept.
    """

    def add_hooks(self, *, loss_reduction: str = "mean", batch_first: bool = True, force_functorch: bool = False):
        if hasattr(self._module, "autograd_grad_sample_hooks"):
            raise ValueError("Trying to add hooks twice to the same model")
        if loss_reduction != "mean" or not batch_first:
            raise ValueError("book-keeping DP-SGD expects batch-first inputs and a mean loss, as the families use")
        self.autograd_grad_sample_hooks = self._module.autograd_grad_sample_hooks = []
        layers = [m for m in self.iterate_submodules(self._module) if type(m) not in (DPRNN, DPLSTM, DPGRU)]
        # A parameter shared by two layers gets its per-record gradient from both; only the
        # per-sample path adds those up, so such layers keep Opacus' hooks.
        seen: dict[int, int] = {}
        for m in layers:
            for p in _own_params(m):
                seen[id(p)] = seen.get(id(p), 0) + 1
        for m in layers:
            fn = formula(m)
            if fn is not None and all(seen[id(p)] == 1 for p in _own_params(m)):
                m._bookkeeping = fn
                m._bookkeeping_calls = []
                for p in _own_params(m):
                    p._bookkeeping_layer = m
                self.autograd_grad_sample_hooks.append(m.register_forward_pre_hook(self._before_call))
                self.autograd_grad_sample_hooks.append(m.register_forward_hook(self._after_call))
                continue
            if force_functorch or type(m) not in self.GRAD_SAMPLERS:
                prepare_layer(m, batch_first=batch_first)
            self.autograd_grad_sample_hooks.append(m.register_forward_hook(self.capture_activations_hook))
            self.autograd_grad_sample_hooks.append(
                m.register_full_backward_hook(
                    partial(self.capture_backprops_hook, loss_reduction=loss_reduction, batch_first=batch_first)
                )
            )
        self.enable_hooks()

    def _records(self, module: nn.Module) -> bool:
        return self.hooks_enabled and module.training and torch.is_grad_enabled() and bool(_own_params(module))

    def _before_call(self, module: nn.Module, inputs: tuple) -> None:
        if not self._records(module) or not isinstance(module, _SKIP_WEIGHT_GRAD):
            return
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].requires_grad:
            # The output still needs a gradient (through the input), which is all the hooks
            # read; the weight's own batch gradient would only be overwritten.
            module._bookkeeping_detached = _own_params(module)
            for p in module._bookkeeping_detached:
                p.requires_grad_(False)

    def _after_call(self, module: nn.Module, inputs: tuple, output) -> None:
        _restore(module)
        if not self._records(module) or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise ValueError(
                f"book-keeping DP-SGD cannot clip {type(module).__name__}: it was called without its input as "
                "the first positional argument, so its per-record gradients are unknown. Call the layer with "
                "its input positionally, or set dp.grad_sample: hooks."
            )
        call = [inputs[0].detach(), None]
        module._bookkeeping_calls.append(call)

        def keep(grad: torch.Tensor) -> None:
            call[1] = grad.detach()

        output.register_hook(keep)


def _restore(module: nn.Module) -> None:
    for p in module.__dict__.pop("_bookkeeping_detached", ()):
        p.requires_grad_(True)


def recorded_parts(layer: nn.Module) -> dict[nn.Parameter, Part]:
    """Each parameter's records' squared gradient norms and clipped sum, from the calls `layer`
    recorded since the last step (which it then forgets)."""
    # A call on no records (a modality no record in the batch has) adds nothing.
    calls = [(x, y) for x, y in layer._bookkeeping_calls if y is not None and len(x) > 0]
    layer._bookkeeping_calls = []
    if not calls:
        return {}
    n = max(len(x) for x, _ in calls)
    # The gradient of a mean loss times the batch size (the largest call's), as Opacus scales
    # it: the record's own gradient.
    return {
        p: (sq * n * n, partial(_scaled, clipped, n))
        for p, (sq, clipped) in layer._bookkeeping(layer, calls, n).items()
    }


def _fallback_grad_sample(p: nn.Parameter) -> Optional[torch.Tensor]:
    gs = getattr(p, "grad_sample", None)
    if isinstance(gs, list):  # several backward passes on one batch: the same records' sums
        n = max(len(t) for t in gs)
        gs = sum(_pad(t, n) for t in gs)
    return gs


def _scaled(clipped: Callable[[torch.Tensor], torch.Tensor], n: int, c: torch.Tensor) -> torch.Tensor:
    return clipped(c * n)


class BookkeepingDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer, clipping from what `BookkeepingGradSampleModule`'s layers kept."""

    def _layers(self) -> list[nn.Module]:
        layers = {}
        for p in self.params:
            layer = getattr(p, "_bookkeeping_layer", None)
            if layer is not None:
                layers[id(layer)] = layer
        return list(layers.values())

    def clip_and_accumulate(self) -> None:
        parts: dict[nn.Parameter, list[Part]] = {}
        for layer in self._layers():
            for p, part in recorded_parts(layer).items():
                parts.setdefault(p, []).append(part)
        for p in self.params:
            if getattr(p, "_bookkeeping_layer", None) is None:
                gs = _fallback_grad_sample(p)
                if gs is not None:
                    parts.setdefault(p, []).append(_materialized(gs.to(p.dtype)))
        all_parts = [part for ps in parts.values() for part in ps]
        n = max((len(sq) for sq, _ in all_parts), default=0)
        sq = torch.zeros(n, device=self.params[0].device if self.params else None)
        for s, _ in all_parts:
            sq[: len(s)] += s.to(sq)
        # The same clip factor as DPOptimizer.clip_and_accumulate, so the modes agree to rounding.
        factor = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in self.params:
            grad = None
            for s, clipped in parts.get(p, []):
                grad = _add(grad, clipped(factor[: len(s)].to(p.dtype)).view_as(p))
            grad = torch.zeros_like(p) if grad is None else grad
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad

    @property
    def accumulated_iterations(self) -> int:
        # Every backward pass since the last step adds to the same records (module docstring).
        return 1

    def add_noise(self) -> None:
        # One draw for all parameters: the same Gaussian noise, without a kernel call per tensor.
        std = self.noise_multiplier * self.max_grad_norm
        grads = [p.summed_grad for p in self.params]
        if self.secure_mode or len({(g.dtype, g.device) for g in grads}) > 1:
            return super().add_noise()
        if std > 0 and grads:
            noise = torch.normal(
                0.0, std, (sum(g.numel() for g in grads),), generator=self.generator, device=grads[0].device
            ).to(grads[0].dtype)
            for p, g, z in zip(self.params, grads, noise.split([g.numel() for g in grads])):
                p.grad = (g + z.view_as(g)).view_as(p)
        else:
            for p, g in zip(self.params, grads):
                p.grad = g.clone().view_as(p)

    def pre_step(self, closure=None) -> bool:
        # DPOptimizer.pre_step, without its check that every parameter has a per-sample gradient.
        if not self.params:
            return True
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = False) -> None:
        for layer in self._layers():
            _restore(layer)
            layer._bookkeeping_calls = []
        super().zero_grad(set_to_none)
