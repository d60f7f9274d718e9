"""Parts every model of a data-aware shrink shares, computed once per mini-batch and replayed everywhere.

The recipe runs the calibration data through several models: the source for importance and covariances,
its rotated copy, and the source and the target again, stage by stage, for compensation. Parts that the
shrink leaves exactly as they are (a detector's backbone at the paper's cut, the first layers a depth cut
keeps) compute the same outputs in each of those models. DETR-R50's backbone is 89% of its forward, so
computing it in every pass made a 32-image calibration cost six backbone passes instead of one.

``find_prefix`` finds those parts without knowing any family: on one calibration example it runs the
source and the target and keeps the outermost modules, called once per forward, whose parameters and
buffers are equal in both and whose inputs and outputs are equal there too (a stateless part whose output
follows the config, like a sine position table of a narrower width, shows as a different output). The
``Prefix`` then stores their outputs per mini-batch, the first time any pass computes them, and every
later pass, in any of the models, gets them from the store (``walk.Walker`` and ``walk.hooked_pass`` ask
it). The probe also tells which output tensors the rest of the forward never reads (stored as empty
placeholders: a backbone's unused scales) and which it changes in place (copied out on every read).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import _disable_current_modes

from .walk import Batches, Spill, Store, _ancestors, _Uses, print_of, serve, split_batch

__all__ = ["Prefix", "find_prefix"]

INPUT = "<input>."  # how the probe names the model's inputs among module outputs


class Prefix:
    """Stored outputs, per mini-batch, of the modules named in ``names``, shared by every model whose
    module of that name holds the same tensors as ``reference``'s."""

    def __init__(self, reference: nn.Module, names: list[str], spill: Spill,
                 written: set[str] = frozenset(), unread: dict[str, frozenset[int]] | None = None,
                 inputs_only: frozenset[str] = frozenset()):
        self.names, self.spill = list(names), spill
        # model inputs that nothing but these modules reads (a detector's pixels and their mask): once their
        # outputs are stored, a forward that replays them all needs only the inputs' shapes (``Batches.served``)
        self.inputs_only = inputs_only if names else frozenset()
        self.stores = {n: Store(spill, copy=n in written, unread=(unread or {}).get(n, frozenset())) for n in names}
        modules = dict(reference.named_modules())
        self._reference = {n: _state(modules[n]) for n in names}
        self._checked: dict[int, bool] = {}
        self._modules: dict[int, dict[str, nn.Module]] = {}  # per model: walking its modules at every run cost seconds

    def applies(self, model: nn.Module) -> bool:
        """Whether ``model`` holds the same tensors in every stored module (checked once per model; a copy
        with other weights there, or another architecture, computes its own)."""
        key = id(model)
        if key not in self._checked:
            modules = self._modules.setdefault(key, dict(model.named_modules()))
            self._checked[key] = all(n in modules and _same_state(_state(modules[n]), self._reference[n])
                                     for n in self.names)
        return self._checked[key]

    def recorded(self, i: int) -> bool:
        """Whether every stored module's output for mini-batch ``i`` is stored."""
        return all(i in store.items for store in self.stores.values())

    def attach(self, model: nn.Module, i: int, *, avoid: Callable[[str], bool] = lambda name: False,
               record: bool = True) -> tuple[list[Any], list[nn.Module]]:
        """Make ``model``'s stored modules return mini-batch ``i``'s stored output, or record it when this is
        the first pass to compute it. ``avoid(name)`` keeps a module computing (a pass that hooks a module
        inside it). Returns the hook handles and the patched modules, for the caller to undo."""
        handles: list[Any] = []
        patched: list[nn.Module] = []
        if not self.applies(model):
            return handles, patched
        modules = self._modules[id(model)]
        for name, store in self.stores.items():
            if avoid(name):
                continue
            serve(modules[name], store, i, record, handles, patched)
        return handles, patched

    def close(self) -> None:
        """Drop every stored output and the spill folder (compensation borrows the spill; it is closed here)."""
        for store in self.stores.values():
            store.drop()
        self.spill.close()


@torch.no_grad()
def find_prefix(source: nn.Module, target: nn.Module, batches: Batches, spill: Spill | None = None) -> Prefix:
    """The modules ``source`` and ``target`` share (see the module doc), found on the first calibration
    example. ``target`` may not be filled yet: its tensors that match the source's by name, shape and dtype
    take the source's values for the probe (what the transfer will copy), and ``Prefix.applies`` checks the
    filled target again before it is served a stored output."""
    probe = split_batch(batches[0], 1)[0]
    src_state = _state(source)
    swapped = {n: t for n, t in _state(target).items() if n in src_state and _alike(t, src_state[n])}
    saved = {n: t.data for n, t in swapped.items()}
    try:
        for n, t in swapped.items():
            t.data = src_state[n].data
        src_modules, tgt_modules = dict(source.named_modules()), dict(target.named_modules())
        # only modules whose every tensor the transfer will copy can be shared: only they are compared,
        # the outermost first, and the parts of one that differs in a further probe (a backbone is
        # usually shared whole: one probe, and a few prints instead of one per convolution)
        candidates = {n for n, m in tgt_modules.items() if n and n in src_modules and _state(m)
                      and all(f"{n}.{k}" in swapped for k in _state(m))}
        compared = {n for n in candidates if not any(a in candidates for a in _ancestors(n))}
        same: set[str] = set()
        uses = None
        while compared:
            seen = [_probe(source, probe, compared), _probe(target, probe, compared)]
            uses = uses or [s[1] for s in seen]
            differ = set()
            for name in compared:
                mine, other = seen[1][0].get(name), seen[0][0].get(name)
                if mine is not None and mine == other and mine[0] == 1:
                    same.add(name)
                else:
                    differ.add(name)
            compared = {n for n in candidates for a in differ if n.startswith(a + ".")
                        and not any(b in candidates and b.startswith(a + ".") for b in _ancestors(n))}
        outer = sorted(same)
        written = set().union(*(u.written for u in uses)) if uses else set()
        unread = {n: uses[0].unread().get(n, frozenset()) & uses[1].unread().get(n, frozenset()) for n in outer}
        prefix = Prefix(source, outer, spill or Spill(), written, unread, _inputs_only(probe, uses or [], set(outer)))
    finally:
        for n, t in swapped.items():
            t.data = saved[n]
    return prefix


def _inputs_only(batch: dict[str, Any], uses: list[_Uses], outer: set[str]) -> frozenset[str]:
    """The tensor inputs of ``batch`` that every probed forward read only inside the ``outer`` modules."""
    return frozenset(k for k, v in batch.items() if isinstance(v, Tensor) and all(
        running & outer for u in uses for running in u.read_in.get(INPUT + k, ())))


def _alike(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _probe(model: nn.Module, batch: dict[str, Any], compared: set[str]) -> tuple[dict[str, tuple[int, tuple]], _Uses]:
    """Per module: how often the forward calls it, and a print of its inputs and outputs (``walk.print_of``) at
    its first call, for the ``compared`` ones; and how the forward uses each output."""
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, tuple[int, tuple]] = {}
    uses = _Uses()

    def pre(module: nn.Module, args: tuple) -> None:
        uses.running.append(names[id(module)])

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        name = names[id(module)]
        uses.running.pop()
        calls, prints = found.get(name, (0, None))
        if prints is None and name in compared:
            with _disable_current_modes():  # the prints are not reads of the forward
                prints = (print_of((args, kwargs)), print_of(output))
        found[name] = (calls + 1, prints)
        uses.produced(name, output)

    handles = [m.register_forward_hook(post, with_kwargs=True) for m in model.modules()]
    handles += [m.register_forward_pre_hook(pre) for m in model.modules()]
    for key, value in batch.items():  # which modules read each input
        if isinstance(value, Tensor):
            uses.watched.add(INPUT + key)
            uses.produced(INPUT + key, value)
    try:
        with uses:
            model.eval()(**batch)
    finally:
        for h in handles:
            h.remove()
    return found, uses


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])) for k in a)
