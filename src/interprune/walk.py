"""The sequential engine: run calibration data through a model one stage at a time, in mini-batches.

SliceGPT and Wanda calibrate huge models by catching what the first block is called with, then running
one block at a time on stored inputs. We do the same without knowing any family: a ``Walker`` runs the
model's own ``forward`` (so every mask, position embedding, rotary cache, encoder memory or cross-attention
input is made exactly as the model makes it) but

* **replays** every module that has already been dealt with: a module called once per forward whose call
  ended before the current stage gets its output from a store (per mini-batch, in memory up to a budget,
  then on disk) instead of computing it, so parts the shrink does not change (a backbone, embeddings) and
  blocks already refit run once;
* **skips** replayed modules whose output only feeds a later replayed module (the earlier blocks of a
  stack): they return a zero placeholder of the same shape, checked on the first mini-batch to change
  nothing the current stage sees, so only one boundary of activations stays stored;
* **stops** as soon as the current stage has what it needs (``Stop``), so a stage costs the part of the
  model between the stored boundary and itself;
* **shares** the outputs of parts the source and the target have in common (``Batches.shared``, found by
  ``prefix.find_prefix``) with every other pass and model of the recipe, and recomputes the parts of the
  current block that are wider than its input instead of storing them for every example.

The first mini-batch is traced once (which module calls which, in what order, on which tensors); stages
are named by a module and the index of its call, so modules called several times per forward (a shared
norm, a query-scale MLP between decoder layers) are handled in order too.
"""

from __future__ import annotations

import itertools
import os
import re
import weakref
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Stop", "Walker", "Batches", "split_batch", "Call", "hooked_pass", "print_of", "serve", "outer_block"]

Batch = dict[str, Any]


class Stop(Exception):
    """Raised inside a forward once a stage has seen what it needs."""


def split_batch(inputs: Batch, size: int | None) -> list[Batch]:
    """One batch of model inputs as mini-batches of ``size`` examples along the first axis (all at once
    for ``None``). Slicing keeps the padding of the whole batch, so statistics match one big batch."""
    tensors = [v for v in inputs.values() if isinstance(v, Tensor) and v.dim() > 0]
    total = int(tensors[0].shape[0]) if tensors else 1
    size = total if size is None or size >= total else max(1, size)
    return [{k: v[i:i + size] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == total else v
             for k, v in inputs.items()} for i in range(0, total, size)]


class Batches(Sequence[Batch]):
    """Mini-batches of calibration inputs, made on demand (``make(i)``).

    ``made=True`` says ``make(i)`` builds a batch afresh (images processed lazily): each is then made once
    and kept, until every output of the shared parts (``shared``, a ``prefix.Prefix``) is recorded for it.
    From then on a forward whose shared parts are all replayed (``for_forward``) gets the inputs only those
    parts read are zero placeholders of their shape, and the real ones are freed. 32 images at 800 px were
    held for the whole recipe, 680 MB with their masks; now a mini-batch's images live until its first
    forward has recorded the backbone's output. A forward that computes a shared part itself gets the
    full batch, made again."""

    def __init__(self, count: int, make: Callable[[int], Batch], sizes: list[int], *, made: bool = False):
        self.count, self.make, self.sizes, self.made = count, make, sizes, made
        self.examples = sum(sizes)  # examples per mini-batch, and in all
        # outputs of the parts every model of the recipe shares, per mini-batch (``prefix.Prefix``): every
        # pass over these batches computes them once, in whichever model comes first
        self.shared: Any = None
        self._kept: dict[int, Batch] = {}  # made batches, full until settled
        self._thin: dict[int, Batch] = {}  # settled batches: placeholders for the inputs only shared parts read

    @classmethod
    def of(cls, inputs: Batch | Sequence[Batch], size: int | None = None) -> "Batches":
        if isinstance(inputs, Batches):
            return inputs
        parts = split_batch(inputs, size) if isinstance(inputs, dict) else list(inputs)
        return cls(len(parts), lambda i: parts[i], [_examples(p) for p in parts])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Batch:  # type: ignore[override]
        """Mini-batch ``i`` with every input real."""
        if not 0 <= i < self.count:
            raise IndexError(i)
        if not self.made:
            return self.make(i)
        if i in self._kept:
            return self._kept[i]
        batch = self.make(i)
        if i not in self._thin:  # made again for a forward that computes a shared part: not kept twice
            self._kept[i] = batch
        return batch

    def __iter__(self) -> Iterator[Batch]:
        return (self[i] for i in range(self.count))

    def for_forward(self, i: int, attached: tuple[list[Any], list[nn.Module]]) -> Batch:
        """Mini-batch ``i`` for a forward with ``attached`` (``Prefix.attach``'s hooks and patched modules):
        where it replays every shared part, the inputs only they read are placeholders; else all are real."""
        if self.shared is None or len(attached[1]) != len(self.shared.stores):
            return self[i]
        self.settle(i)
        return self._thin.get(i) or self[i]

    def settle(self, i: int) -> None:
        """Once the shared parts' outputs for ``i`` are all stored, free the inputs only they read."""
        shared = self.shared
        if not self.made or i in self._thin or i not in self._kept or shared is None or not shared.recorded(i):
            return
        full = self._kept.pop(i)
        self._thin[i] = {k: _placeholder(v) if k in shared.inputs_only else v for k, v in full.items()}


def hooked_pass(model: nn.Module, inputs: Batch | Sequence[Batch], hooks: list[tuple[nn.Module, Callable]], *,
                with_kwargs: bool = False, before_batch: Callable[[], None] | None = None,
                pre: list[tuple[nn.Module, Callable]] = ()) -> None:
    """One pass of ``model`` (in eval mode) over the mini-batches of ``inputs`` with forward ``hooks`` (and
    forward pre-hooks ``pre``) attached, removed afterwards whatever happens: how scores and covariances are
    summed over a calibration set. A hook may raise ``Stop`` to end a mini-batch's forward there."""
    handles = [module.register_forward_hook(hook, with_kwargs=with_kwargs) for module, hook in hooks]
    # before any other pre-hook: one that ends the forward there spares the rest (a half-precision output
    # layer would be made float32 only to be stopped)
    handles += [module.register_forward_pre_hook(hook, prepend=True) for module, hook in pre]
    hooks = [*hooks, *pre]
    batches = Batches.of(inputs)
    names = {id(m): n for n, m in model.named_modules()}
    hooked = [names[id(module)] for module, _ in hooks if id(module) in names]
    inside = lambda name: any(h == name or h.startswith(name + ".") for h in hooked)  # noqa: E731
    model.eval()  # once: setting the mode walks every module, which cost DETR-R50 9 s over a recipe's runs
    try:
        for i in range(len(batches)):
            if before_batch is not None:
                before_batch()
            shared = batches.shared.attach(model, i, avoid=inside) if batches.shared is not None else ([], [])
            try:
                model(**batches.for_forward(i, shared))
            except Stop:
                pass
            finally:
                _undo(*shared)
                batches.settle(i)
    finally:
        for handle in handles:
            handle.remove()


def serve(module: nn.Module, store: "Store", i: int, record: bool, handles: list[Any],
          patched: list[nn.Module]) -> None:
    """Make ``module`` return mini-batch ``i``'s output from ``store``, or (``record``) store it when it runs;
    the patched module or the hook handle is added to the lists for ``_undo``."""
    if i in store.items:
        module.forward = lambda *a, **k: store.get(i)
        patched.append(module)
    elif record:
        handles.append(module.register_forward_hook(lambda m, a, o: store.put(i, o)))


def _undo(handles: list[Any], patched: list[nn.Module]) -> None:
    """Remove hooks and patched ``forward`` attributes."""
    for handle in handles:
        handle.remove()
    for module in patched:
        del module.forward


def _examples(batch: Batch) -> int:
    first = next((v for v in batch.values() if isinstance(v, Tensor) and v.dim() > 0), None)
    return int(first.shape[0]) if first is not None else 0


@dataclass(frozen=True)
class Call:
    """One call of a module in the traced forward: event counters at entry and exit, and the identities
    of its first positional input and of the tensors it returned (to see what feeds what)."""

    enter: int
    exit: int
    input_id: int | None
    output_ids: frozenset[int]
    input_size: int = 0  # elements of the first positional input
    output_size: int = 0  # elements of every tensor returned


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Uses(TorchDispatchMode):
    """How the rest of a forward uses each module's outputs, seen at the level of aten ops: which outputs
    it writes to in place after the module returned them (every op whose schema marks an argument as
    written), and which output tensors it reads at all. An output is known by its storage (held weakly: a
    storage lives while any view of it does, so a freed output whose memory is reused is not mistaken for
    it) and by the number of ops run when it was returned."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.outputs = 0, {}
        self.written: set[str] = set()
        self.read: set[tuple[str, int]] = set()  # (module, position of the tensor in its output)
        self.made: dict[str, int] = {}  # module -> tensors in its output
        # the modules running now (``prefix._probe`` keeps it), and for each output in ``watched`` the sets of
        # modules that were running at its reads: which parts read a model input
        self.running: list[str] = []
        self.watched: set[str] = set()
        self.read_in: dict[str, set[frozenset[str]]] = {}

    def produced(self, name: str, output: Any) -> None:
        """``name`` returned ``output`` after the ops so far (its own work on it came before)."""
        tensors = _tensors(output)
        self.made[name] = max(self.made.get(name, 0), len(tensors))
        for position, t in enumerate(tensors):
            storage = _storage(t)
            if storage is not None:
                self.outputs.setdefault(storage.data_ptr(), []).append((name, position, self.ops, weakref.ref(storage)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        for k, argument in enumerate(func._schema.arguments):
            value = args[k] if k < len(args) else kwargs.get(argument.name)
            write = argument.alias_info is not None and argument.alias_info.is_write
            for t in _tensors(value):
                storage = _storage(t)
                if storage is None:
                    continue
                for name, position, made, ref in self.outputs.get(storage.data_ptr(), ()):
                    if made < self.ops and ref() is storage:
                        self.read.add((name, position))
                        if name in self.watched:
                            self.read_in.setdefault(name, set()).add(frozenset(self.running))
                        if write:
                            self.written.add(name)
        return func(*args, **kwargs)

    def unread(self) -> dict[str, frozenset[int]]:
        """Per module, the positions of the output tensors nothing after it reads."""
        return {n: frozenset(k for k in range(count) if (n, k) not in self.read) for n, count in self.made.items()}


def _storage(t: Tensor) -> Any:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (meta, functional): nothing to mark
        return None


def _placeholder(value: Any) -> Any:
    """A value of the same structure whose tensors are zeros that take no memory (expanded scalars)."""
    if isinstance(value, Tensor):
        return torch.zeros((), dtype=value.dtype, device=value.device).expand(value.shape)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_placeholder(v) for v in value)
    if isinstance(value, list):
        return [_placeholder(v) for v in value]
    return value


def _skippable(value: Any) -> bool:
    """Outputs a placeholder can stand for: tensors and plain tuples/lists of them (or None)."""
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return all(v is None or _skippable(v) for v in value)
    return False


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


class Store:
    """Per mini-batch outputs of one module: in memory while the walk's budget allows, else on disk."""

    def __init__(self, spill: "Spill", copy: bool = True, unread: frozenset[int] = frozenset()):
        self.spill, self.items, self.shapes, self.copy, self.unread = spill, {}, None, copy, unread

    def put(self, i: int, value: Any) -> None:
        """Keep mini-batch ``i``'s output; tensors the forward never reads (a backbone's feature maps at
        the scales a detector does not use) are kept as placeholders of their shape, taking no memory."""
        position = itertools.count()

        def keep(t: Tensor) -> Tensor:
            if next(position) in self.unread:
                return _placeholder(t)
            return t.detach().clone() if self.copy else t.detach()
        value = _map(value, keep)
        if self.shapes is None:
            self.shapes = _placeholder(value)
        self.items[i] = self.spill.keep(value)

    def get(self, i: int) -> Any:
        """A copy where the model changes this output in place later in its forward (DETR heads add
        reference points to theirs), else the stored tensors themselves: copying a detector's feature maps
        at every stage cost a fifth of its calibration."""
        value = self.spill.load(self.items[i])
        return _map(value, lambda t: t.clone()) if self.copy else value

    def drop(self) -> None:
        for item in self.items.values():
            self.spill.release(item)
        self.items.clear()


def _detached(value: Any) -> Any:
    return _map(value, lambda t: t.detach())


def _map(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor inside tuples, lists and dicts (model outputs too)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_map(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        items = {k: _map(v, fn) for k, v in value.items()}
        return items if type(value) is dict else type(value)(**items)
    return value


@dataclass
class Spill:
    """Stored boundaries share one budget (bytes, ``None``: no limit); past it they go to a private
    temporary folder on disk, removed when the walk ends."""

    budget: int | None = None
    used: int = 0
    folder: str | None = None
    _count: int = field(default=0, repr=False)

    def keep(self, value: Any) -> Any:
        size = _nbytes(value)
        if self.budget is None or self.used + size <= self.budget:
            self.used += size
            return ("mem", value, size)
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="interprune-walk-")
        self._count += 1
        path = os.path.join(self.folder, f"{self._count}.pt")
        torch.save(_to_cpu(value), path)
        return ("disk", (path, _device_of(value)), size)

    def load(self, item: tuple) -> Any:
        kind, value, _ = item
        if kind == "mem":
            return value
        path, device = value
        return _to(torch.load(path, weights_only=False), device)

    def release(self, item: tuple) -> None:
        kind, value, size = item
        if kind == "mem":
            self.used -= size
        else:
            os.unlink(value[0])

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _device_of(value: Any) -> torch.device | None:
    tensors = _tensors(value)
    return tensors[0].device if tensors else None


def _to_cpu(value: Any) -> Any:
    return _to(value, torch.device("cpu"))


def _to(value: Any, device: torch.device | None) -> Any:
    return value if device is None else _map(value, lambda t: t.to(device))


def print_of(value: Any) -> tuple:
    """Every tensor in ``value`` as its shape, dtype, sum and sum of squares (accumulated in float64 or int64,
    without a float64 copy of the tensor): equal for the same computation, unequal for any other in practice.
    How the engine tells whether a forward saw the same inputs."""
    out = []
    for t in _tensors(value):
        kind, t = str(t.dtype), t.detach()
        if t.is_complex():
            t = torch.view_as_real(t)
        if not t.is_floating_point():
            t = t.long()
        wide = torch.float64 if t.is_floating_point() else torch.int64
        out.append((tuple(t.shape), kind, float(t.sum(dtype=wide)), float((t * t).sum(dtype=wide))))
    return tuple(out)


def _ancestors(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


def _block_level(name: str) -> bool:
    """A block of a stack (``layers.3``) or a part outside every stack (``embed_tokens``, ``backbone``):
    the modules worth skipping (a part inside a block holds one block's intermediate, not a boundary)."""
    parts = name.split(".")
    return parts[-1].isdigit() or not any(p.isdigit() for p in parts)


def _recomputed(name: str, module: nn.Module) -> bool:
    """Parts the walk computes again from their input rather than store for every example: a leaf whose
    parameters are all vectors (a norm's gain and shift: computing it costs about what reading its stored
    output costs), and a linear map inside a block (queries, keys and values were stored so that a later stage
    could compute the attention from them: a boundary per example for three small products per pass)."""
    if any(True for _ in module.children()):
        return False
    if isinstance(module, nn.Linear):
        return outer_block(name) not in (None, name)
    params = list(module.parameters(recurse=False))
    return bool(params) and all(p.dim() <= 1 for p in params)


def outer_block(name: str) -> str | None:
    """The outermost block of a stack that ``name`` lies in (``model.layers.3`` for its attention)."""
    parts = name.split(".")
    index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return ".".join(parts[: index + 1]) if index is not None else None


class Walker:
    """Runs ``model`` on mini-batch ``i`` with finished modules replayed or skipped (see the module doc)."""

    def __init__(self, model: nn.Module, batches: Batches, spill: Spill | None = None):
        self.model, self.batches = model.eval(), batches
        self.spill = spill or Spill()
        self.modules = dict(model.named_modules())
        self.calls: dict[str, list[Call]] = {}
        self.written: set[str] = set()  # modules whose output the forward changes in place after their call
        self.unread: dict[str, frozenset[int]] = {}  # module -> output tensors the rest of the forward never reads
        self.stores: dict[str, Store] = {}
        self.replayed: set[str] = set()
        self.skipped: dict[str, Any] = {}  # name -> placeholder output
        self._verdicts: dict[tuple[str, str], bool] = {}  # (parent, class) -> whether skipping is safe
        self.on_call: dict[str, Callable[[nn.Module, int], None]] = {}  # name -> fn(module, traced call index)
        # parts cheaper to compute again from their input than to store for every example (a boundary each)
        self.cheap = {n for n, m in self.modules.items() if _recomputed(n, m)}

    # ------------------------------------------------------------------------------------------ trace
    @torch.no_grad()
    def trace(self) -> None:
        """Record every module call of one forward on the first mini-batch, in order."""
        names = {id(m): n for n, m in self.modules.items()}
        counter, open_calls, serials = [0], {}, {}

        def serial(t: Tensor) -> int:
            """A number per tensor object of this forward, without keeping the tensor alive (an ``id``
            alone may be reused by a later tensor once the first one is freed)."""
            known = serials.get(id(t))
            if known is None or known[0]() is not t:
                known = serials[id(t)] = (weakref.ref(t), len(serials) + counter[0] * 1_000_003)
            return known[1]

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            counter[0] += 1
            first = args[0] if args and isinstance(args[0], Tensor) else None
            open_calls.setdefault(id(module), []).append(
                (counter[0], None if first is None else serial(first), 0 if first is None else first.numel()))

        uses = _Uses()

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            counter[0] += 1
            enter, input_id, size = open_calls[id(module)].pop()
            tensors = _tensors(output)
            self.calls.setdefault(names[id(module)], []).append(
                Call(enter, counter[0], input_id, frozenset(serial(t) for t in tensors), size,
                     sum(t.numel() for t in tensors)))
            uses.produced(names[id(module)], output)

        handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in self.modules.values()]
        handles += [m.register_forward_hook(post, with_kwargs=True) for m in self.modules.values()]
        # the shared parts (``prefix.Prefix``) are replayed here too: their inner calls are never stages
        shared = self.batches.shared.attach(self.model, 0) if self.batches.shared is not None else ([], [])
        try:
            with uses:
                self.model.eval()(**self.batches.for_forward(0, shared))
        finally:
            for h in handles:
                h.remove()
            _undo(*shared)
            self.batches.settle(0)
        self.written, self.unread = uses.written, uses.unread()
        for calls in self.calls.values():
            calls.sort(key=lambda c: c.enter)

    def enter(self, name: str, call: int) -> int:
        return self.calls[name][call].enter

    # ----------------------------------------------------------------------------------------- stages
    def prepare(self, start: int) -> None:
        """Before a stage that begins at trace event ``start``: replay the outermost modules called once
        whose call ended before it, drop stores they subsume, and skip stored ones a later replayed module
        consumes, when the first mini-batch shows that the stage sees the same inputs without them."""
        done = {n for n, calls in self.calls.items() if n and len(calls) == 1 and calls[0].exit < start}
        outer = {n for n in done if not any(a in done for a in _ancestors(n))} - self._wide_parts(start)
        complete = {n for n in outer if n in self.stores and len(self.stores[n].items) == len(self.batches)}
        # a module replayed for the first time is recorded from its parts' stores, so it keeps the outputs
        # they had when they ran (a norm refit again later must not change what an earlier block saw)
        keep = outer | {n for n in (*self.stores, *self.skipped)
                        if any(a in outer and a not in complete for a in _ancestors(n))}
        for name in [n for n in self.stores if n not in keep]:
            self.stores.pop(name).drop()
        self.skipped = {n: v for n, v in self.skipped.items() if n in keep}
        self.replayed = keep - set(self.skipped)
        complete = {n for n in self.replayed if n in self.stores and len(self.stores[n].items) == len(self.batches)}
        # read by a finished *block* (not by a part of the current block, which may read it again through
        # the residual: a verdict is kept per role, so it must be taken where skipping can be right), and by
        # no block not yet complete (a rotary table's input is the embeddings the first block reads too: a
        # verdict taken there said "never skip the embeddings", and kept them for the whole walk)
        consumed = {self.calls[n][0].input_id for n in complete if _block_level(n)}
        pending = {calls[0].input_id for n, calls in self.calls.items()
                   if _block_level(n) and len(calls) == 1 and n not in complete}
        candidates = frozenset(n for n in complete if self.calls[n][0].output_ids & consumed
                               and not self.calls[n][0].output_ids & pending
                               and _skippable(self.stores[n].shapes) and _block_level(n))
        for name in sorted(candidates):
            role = re.sub(r"\.\d+(?=\.|$)", ".*", name)  # the same part of every block of a stack
            key = (role, type(self.modules[name]).__name__)
            if key not in self._verdicts:  # checked once per role, so the check costs one block, not the depth
                self._verdicts[key] = self._same_view(frozenset([name]), start)
            if self._verdicts[key]:
                store = self.stores.pop(name)
                self.skipped[name] = store.shapes
                self.replayed.discard(name)
                store.drop()

    def _wide_parts(self, start: int) -> set[str]:
        """Parts of the stage's block whose output is larger than the block's input (an FFN's up projection):
        recomputed from the stored parts before them at each later stage of the block rather than stored for
        every example, which made memory grow by several boundaries' worth with the calibration set."""
        name = next((n for n, calls in self.calls.items() for c in calls if c.enter == start), None)
        block = outer_block(name) if name is not None else None
        if block is None or len(self.calls.get(block, [])) != 1:
            return set()
        limit = self.calls[block][0].input_size
        return {n for n, calls in self.calls.items() if n.startswith(block + ".") and len(calls) == 1
                and calls[0].exit < start and calls[0].output_size > limit > 0}

    def _same_view(self, candidates: frozenset[str], start: int) -> bool:
        """Whether every module call of the rest of the forward on the first mini-batch gets the same
        inputs with ``candidates`` skipped (a mask or a position table hidden in a skipped output would
        show here, not only at the stage)."""
        name = next(n for n, calls in self.calls.items() for c in calls if c.enter == start)
        until = outer_block(name)
        until = until if until in self.calls and len(self.calls[until]) == 1 else None
        seen = [self._fingerprint({}, until), self._fingerprint({n: self.stores[n].shapes for n in candidates}, until)]
        return seen[0] is not None and seen[0] == seen[1]

    @torch.no_grad()
    def _fingerprint(self, extra: dict[str, Any], until: str | None) -> list | None:
        """Every module input of the first mini-batch's forward, up to the end of block ``until`` (the
        block of the stage: what a skipped output could change first) or of the model."""
        prints: list = []

        def stop(module: nn.Module, args: tuple, output: Any) -> None:
            raise Stop

        def note(module: nn.Module, args: tuple, kwargs: dict) -> None:
            prints.append(print_of((args, kwargs)))

        # a replayed or skipped module returns what is stored whatever it is called with: its inputs (the
        # placeholder itself, when the next block reads it) are not something the stage sees
        standing_in = self.replayed | set(self.skipped) | set(extra)
        handles = [m.register_forward_pre_hook(note, with_kwargs=True) for n, m in self.modules.items()
                   if n not in standing_in]
        if until is not None:
            handles.append(self.modules[until].register_forward_hook(stop))
        try:
            self.run(0, [], replayed=self.replayed - set(extra), skipped={**self.skipped, **extra}, record=False)
        except Exception:  # a placeholder the model cannot take: not skippable
            return None
        finally:
            for h in handles:
                h.remove()
        return prints

    def observed(self, name: str, call: int, replayed: set[str] | None = None,
                 skipped: dict[str, Any] | None = None) -> int:
        """Index among the calls a walk really makes (calls inside replayed or skipped modules vanish)."""
        hidden = [self.calls[n][0] for n in (self.replayed if replayed is None else replayed) | set(
            self.skipped if skipped is None else skipped)]
        return sum(1 for c in self.calls[name][:call] if not any(h.enter < c.enter and c.exit < h.exit for h in hidden))

    # -------------------------------------------------------------------------------------------- run
    @torch.no_grad()
    def run(self, i: int, hooks: list[tuple[str, int, str, Callable]], *, replayed: set[str] | None = None,
            skipped: dict[str, Any] | None = None, record: bool = True, whole: str | None = None) -> None:
        """Mini-batch ``i`` through the model; ``hooks`` are ``(module, call, "pre"|"post", fn)`` called at
        that call only (``fn(module, args, kwargs[, output])``); any of them may raise ``Stop``. ``whole`` names
        a block this pass records as a whole (``recorder``): the parts of it that run are not stored, since
        later passes replay the block itself (storing them cost three boundaries per example on a decoder)."""
        replayed = self.replayed if replayed is None else replayed
        skipped = self.skipped if skipped is None else skipped
        shared = self.batches.shared
        handles, patched = shared.attach(self.model, i, record=record) if shared is not None else ([], [])
        attached = (handles, list(patched))  # the shared parts' own: more are added below
        common = set(shared.stores) if shared is not None and shared.applies(self.model) else set()
        for name in replayed - common:  # the shared parts are replayed from their own store
            module, store = self.modules[name], self.stores.get(name)
            if store is None and record and name not in self.cheap and not (
                    whole is not None and name.startswith(whole + ".")):
                store = self.stores[name] = Store(self.spill, copy=name in self.written,
                                                  unread=self.unread.get(name, frozenset()))
            if store is not None:
                serve(module, store, i, record, handles, patched)
        for name, shapes in skipped.items():
            self.modules[name].forward = (lambda v: lambda *a, **k: _placeholder(v))(shapes)
            patched.append(self.modules[name])
        for name, call, kind, fn in hooks:
            handles.append(self._at_call(name, self.observed(name, call, replayed, skipped), kind, fn))
        for name, fn in self.on_call.items():
            handles.append(self._every_call(name, self.visible(name, replayed, skipped), fn))
        try:  # in eval mode since ``__init__``
            self.model(**self.batches.for_forward(i, attached))
        except Stop:
            pass
        finally:
            _undo(handles, patched)
            self.batches.settle(i)

    def visible(self, name: str, replayed: set[str], skipped: dict[str, Any]) -> list[int]:
        """The traced indices of the calls of ``name`` a walk really makes, in order."""
        hidden = [self.calls[n][0] for n in replayed | set(skipped)]
        return [k for k, c in enumerate(self.calls.get(name, []))
                if not any(h.enter < c.enter and c.exit < h.exit for h in hidden)]

    def _every_call(self, name: str, visible: list[int], fn: Callable) -> Any:
        count = [0]

        def pre(m: nn.Module, args: tuple) -> None:
            k = visible[count[0]] if count[0] < len(visible) else count[0]
            count[0] += 1
            fn(m, k)
        return self.modules[name].register_forward_pre_hook(pre)

    def _at_call(self, name: str, call: int, kind: str, fn: Callable) -> Any:
        count = [0]
        module = self.modules[name]

        def pre(m: nn.Module, args: tuple, kwargs: dict) -> None:
            count[0] += 1
            if count[0] - 1 == call:
                fn(m, args, kwargs)

        def post(m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            count[0] += 1
            if count[0] - 1 == call:
                fn(m, args, kwargs, output)

        if kind == "pre":  # first, as in ``hooked_pass``
            return module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
        return module.register_forward_hook(post, with_kwargs=True)

    def recorder(self, name: str) -> Callable[[int, Any], None]:
        """``put(i, output)`` into ``name``'s store, as a replay would record it: a caller that runs the
        whole of a module anyway (the source's last stage of a block) stores its output in the same pass."""
        if name not in self.stores:
            self.stores[name] = Store(self.spill, copy=name in self.written, unread=self.unread.get(name, frozenset()))
        return self.stores[name].put

    def close(self) -> None:
        for store in self.stores.values():
            store.drop()
        self.stores.clear()
