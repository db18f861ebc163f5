"""Convert state_dicts between the reference ShiftWise_v2 naming (SPEC §6.4) and swconv's
``ShiftWiseV2`` (``swconv.models.shiftwise_v2``).

The reference does not save its shift tables or ghost split (they are regenerated at
construction); swconv keeps them as buffers, so ``convert_reference_state_dict`` regenerates them
from the tensor shapes with the same seeded generators (``swconv.ops.tables``):
C from the block BN, rep channels from the horizontal-branch BN, nk = small-kernel rows / rep,
ghost count = C - rep. ``n_rep`` is not visible in a state_dict and must be given.

Name map (reference -> swconv)::

    downsample_layers.0.{0,1,3,4}.*            stem.{0,1,3,4}.*
    downsample_layers.i.{0,1}.*  (i >= 1)      stages.i.downsample.{0,1}.*
    stages.S.B.large_kernel.LoRAs.P.weight     stages.S.blocks.B.conv.paths.P.weight
    stages.S.B.large_kernel.LoRA.weight        stages.S.blocks.B.conv.paths.0.weight  (merged)
    stages.S.B.large_kernel.bn_lora1/2.*       stages.S.blocks.B.conv.bn_h/bn_v.*
    stages.S.B.large_kernel.bn_small.*         stages.S.blocks.B.conv.bn_i.*
    stages.S.B.norm.*                          stages.S.blocks.B.norm.*
    stages.S.B.se.{down,up}.*                  stages.S.blocks.B.se.{down,up}.*
    stages.S.B.pwconv1.1.*                     stages.S.blocks.B.pwconv1.*
    stages.S.B.act.1.gamma / beta (1,1,1,4C)   stages.S.blocks.B.grn.weight / bias (4C,)
    stages.S.B.pwconv2.0.weight                stages.S.blocks.B.pwconv2.weight
    stages.S.B.pwconv2.2.*                     stages.S.blocks.B.norm2.*
    stages.S.B.gamma                           stages.S.blocks.B.gamma
    norm.*, head.*                             norm.*, head.*
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from swconv.ops.tables import ghost_split_from_count, make_shift_tables

__all__ = ["convert_reference_state_dict", "is_reference_state_dict", "to_reference_state_dict"]

_SW_BUFFERS = ("rep_index", "ghost_index", "perm_h", "perm_v", "identity_pick", "kernel_mask")
_BN_BRANCH = {"bn_lora1": "bn_h", "bn_lora2": "bn_v", "bn_small": "bn_i"}
_BN_BRANCH_INV = {v: k for k, v in _BN_BRANCH.items()}

_REF_STEM = re.compile(r"^downsample_layers\.0\.([0134])\.(weight|bias)$")
_REF_DOWN = re.compile(r"^downsample_layers\.(\d+)\.([01])\.(weight|bias)$")
_REF_SW = re.compile(r"^stages\.(\d+)\.(\d+)\.large_kernel\.(.+)$")
_REF_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(.+)$")
_REF_TOP = re.compile(r"^(norm|head)\.(weight|bias)$")

_OUR_STEM = re.compile(r"^stem\.([0134])\.(weight|bias)$")
_OUR_DOWN = re.compile(r"^stages\.(\d+)\.downsample\.([01])\.(weight|bias)$")
_OUR_SW = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.conv\.(.+)$")
_OUR_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")

_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# block-level names after "stages.S.B." (reference) / "stages.S.blocks.B." (ours)
_BLOCK_RULES = [
    (re.compile(rf"^norm\.{_BN_FIELDS}$"), r"norm.\1"),
    (re.compile(r"^se\.(down|up)\.(weight|bias)$"), r"se.\1.\2"),
    (re.compile(r"^pwconv1\.1\.(weight|bias)$"), r"pwconv1.\1"),
    (re.compile(r"^act\.1\.gamma$"), "grn.weight"),
    (re.compile(r"^act\.1\.beta$"), "grn.bias"),
    (re.compile(r"^pwconv2\.0\.weight$"), "pwconv2.weight"),
    (re.compile(rf"^pwconv2\.2\.{_BN_FIELDS}$"), r"norm2.\1"),
    (re.compile(r"^gamma$"), "gamma"),
]
_BLOCK_RULES_INV = [
    (re.compile(rf"^norm\.{_BN_FIELDS}$"), r"norm.\1"),
    (re.compile(r"^se\.(down|up)\.(weight|bias)$"), r"se.\1.\2"),
    (re.compile(r"^pwconv1\.(weight|bias)$"), r"pwconv1.1.\1"),
    (re.compile(r"^grn\.weight$"), "act.1.gamma"),
    (re.compile(r"^grn\.bias$"), "act.1.beta"),
    (re.compile(r"^pwconv2\.weight$"), "pwconv2.0.weight"),
    (re.compile(rf"^norm2\.{_BN_FIELDS}$"), r"pwconv2.2.\1"),
    (re.compile(r"^gamma$"), "gamma"),
]
_REF_SW_PATH = re.compile(r"^LoRAs\.(\d+)\.weight$")
_REF_SW_BN = re.compile(rf"^(bn_lora1|bn_lora2|bn_small)\.{_BN_FIELDS}$")
_OUR_SW_PATH = re.compile(r"^paths\.(\d+)\.weight$")
_OUR_SW_BN = re.compile(rf"^(bn_h|bn_v|bn_i)\.{_BN_FIELDS}$")


def _unwrap(state_dict: Mapping) -> dict:
    """Accept a checkpoint dict ({'model': sd} / {'state_dict': sd}) and strip DDP 'module.'."""
    for key in ("model", "state_dict", "model_ema"):
        if key in state_dict and isinstance(state_dict[key], Mapping) and not torch.is_tensor(state_dict[key]):
            state_dict = state_dict[key]
            break
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def is_reference_state_dict(state_dict: Mapping) -> bool:
    """True when ``state_dict`` uses the reference ShiftWise_v2 naming (SPEC §6.4)."""
    keys = list(_unwrap(state_dict))
    return any(k.startswith("downsample_layers.0.") for k in keys) and any(_REF_SW.match(k) for k in keys)


def _not_reference_error(keys: list[str], why: str) -> ValueError:
    sample = ", ".join(repr(k) for k in keys[:6])
    hint = ""
    if any(k.startswith("stem.") or ".conv.paths." in k for k in keys):
        hint = " It looks like a swconv state_dict already: load it directly."
    return ValueError(
        f"not a reference ShiftWise_v2 state_dict ({why}): expected keys such as "
        f"'downsample_layers.0.0.weight' and 'stages.0.0.large_kernel.LoRAs.0.weight'; "
        f"got {len(keys)} keys, e.g. {sample}.{hint}"
    )


def convert_reference_state_dict(
    state_dict: Mapping, n_rep: int = 4, masks_from_zeros: bool = True
) -> dict[str, torch.Tensor]:
    """Map a reference ShiftWise_v2 state_dict to swconv's ``ShiftWiseV2`` naming.

    The result loads with ``model.load_state_dict(converted, strict=True)`` into a ``ShiftWiseV2``
    of the matching configuration (n_path = number of ``LoRAs``; a merged checkpoint with
    ``LoRA.weight`` loads into a model after ``merge_paths()`` or built with ``n_path=1``).

    Args:
        state_dict: reference state_dict (a checkpoint dict with a ``model`` / ``state_dict``
            entry and DDP ``module.`` prefixes are accepted too).
        n_rep: N_rep the checkpoint was trained with (not recoverable from shapes).
        masks_from_zeros: ``kernel_mask[q, p] = 0`` for small kernels that are entirely zero in
            path q (a pruned reference kernel), as the reference downstream code rebuilds masks
            from exact zeros; otherwise all ones. Either way the outputs are identical.

    Raises:
        ValueError: for keys that are not reference ShiftWise_v2 names or inconsistent shapes.
    """
    sd = _unwrap(state_dict)
    keys = list(sd)
    if not is_reference_state_dict(sd):
        raise _not_reference_error(keys, "no 'downsample_layers.0.*' / 'stages.S.B.large_kernel.*' keys")

    out: dict[str, torch.Tensor] = {}
    sw: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if m := _REF_STEM.match(key):
            out[f"stem.{m[1]}.{m[2]}"] = value
        elif (m := _REF_DOWN.match(key)) and int(m[1]) > 0:
            out[f"stages.{m[1]}.downsample.{m[2]}.{m[3]}"] = value
        elif m := _REF_SW.match(key):
            s, b, rest = int(m[1]), int(m[2]), m[3]
            if not (_REF_SW_PATH.match(rest) or rest == "LoRA.weight" or _REF_SW_BN.match(rest)):
                unknown.append(key)
                continue
            sw.setdefault((s, b), {})[rest] = value
        elif m := _REF_BLOCK.match(key):
            prefix, rest = f"stages.{m[1]}.blocks.{m[2]}.", m[3]
            for pattern, repl in _BLOCK_RULES:
                if pattern.match(rest):
                    new = pattern.sub(repl, rest)
                    out[prefix + new] = value.reshape(-1) if new.startswith("grn.") else value
                    break
            else:
                unknown.append(key)
        elif _REF_TOP.match(key):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise _not_reference_error(unknown, f"{len(unknown)} key(s) with no swconv counterpart")

    for (s, b), entries in sorted(sw.items()):
        prefix = f"stages.{s}.blocks.{b}.conv."
        where = f"stages.{s}.{b}.large_kernel"
        norm_key = f"stages.{s}.blocks.{b}.norm.weight"
        if norm_key not in out:
            raise ValueError(f"{where}: block BN 'stages.{s}.{b}.norm.weight' missing (needed for C)")
        if "bn_lora1.weight" not in entries:
            raise ValueError(f"{where}: 'bn_lora1.weight' missing (needed for the rep channel count)")
        channels = out[norm_key].numel()
        rep = entries["bn_lora1.weight"].numel()
        path_ids = sorted(int(_REF_SW_PATH.match(k)[1]) for k in entries if _REF_SW_PATH.match(k))
        if "LoRA.weight" in entries:
            if path_ids:
                raise ValueError(f"{where}: has both merged 'LoRA.weight' and 'LoRAs.*' paths")
            weights = [entries["LoRA.weight"]]
        else:
            if path_ids != list(range(len(path_ids))) or not path_ids:
                raise ValueError(f"{where}: small-kernel paths must be LoRAs.0..P-1, got {path_ids}")
            weights = [entries[f"LoRAs.{p}.weight"] for p in path_ids]
        rows = weights[0].shape[0]
        if any(w.dim() != 4 or w.shape[1] != 1 or w.shape != weights[0].shape for w in weights):
            raise ValueError(f"{where}: small-kernel weights must all be (rep*nk, 1, k, k)")
        if rep > channels or rows % rep:
            raise ValueError(f"{where}: {rows} small kernels are not a multiple of rep={rep} (C={channels})")
        n_slots = rows // rep

        for p, w in enumerate(weights):
            out[f"{prefix}paths.{p}.weight"] = w
        for rest, value in entries.items():
            if bm := _REF_SW_BN.match(rest):
                out[f"{prefix}{_BN_BRANCH[bm[1]]}.{bm[2]}"] = value
        rep_index, ghost_index = ghost_split_from_count(channels, channels - rep)
        perm_h, perm_v, identity_pick = make_shift_tables(rep, n_slots, n_rep)
        if masks_from_zeros:
            mask = torch.stack([(w.detach().flatten(1) != 0).any(1) for w in weights]).float()
        else:
            mask = torch.ones(len(weights), rows)
        out.update(
            {
                prefix + "rep_index": rep_index,
                prefix + "ghost_index": ghost_index,
                prefix + "perm_h": perm_h,
                prefix + "perm_v": perm_v,
                prefix + "identity_pick": identity_pick,
                prefix + "kernel_mask": mask,
            }
        )
    return out


def to_reference_state_dict(state_dict: Mapping | nn.Module, merged: bool | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_reference_state_dict`: swconv ``ShiftWiseV2`` -> reference names.

    Each path's ``kernel_mask`` is multiplied into its weights (the reference has no masks: a
    pruned kernel is a zero kernel), and the SW buffers are dropped.

    Args:
        state_dict: a ``ShiftWiseV2`` state_dict (or the model itself).
        merged: True -> sum the paths into ``LoRA.weight``; False -> always ``LoRAs.P.weight``;
            None -> ``LoRA.weight`` when a layer has a single path (a merged model), else ``LoRAs``.
    """
    sd = _unwrap(state_dict.state_dict() if isinstance(state_dict, nn.Module) else state_dict)
    out: dict[str, torch.Tensor] = {}
    sw: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if m := _OUR_STEM.match(key):
            out[f"downsample_layers.0.{m[1]}.{m[2]}"] = value
        elif m := _OUR_DOWN.match(key):
            out[f"downsample_layers.{m[1]}.{m[2]}.{m[3]}"] = value
        elif m := _OUR_SW.match(key):
            sw.setdefault((int(m[1]), int(m[2])), {})[m[3]] = value
        elif m := _OUR_BLOCK.match(key):
            prefix, rest = f"stages.{m[1]}.{m[2]}.", m[3]
            for pattern, repl in _BLOCK_RULES_INV:
                if pattern.match(rest):
                    new = pattern.sub(repl, rest)
                    out[prefix + new] = value.reshape(1, 1, 1, -1) if new.startswith("act.") else value
                    break
            else:
                unknown.append(key)
        elif _REF_TOP.match(key):
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not a swconv ShiftWiseV2 state_dict; unexpected keys: {unknown[:6]}")

    for (s, b), entries in sorted(sw.items()):
        prefix = f"stages.{s}.{b}.large_kernel."
        n_path = len([k for k in entries if _OUR_SW_PATH.match(k)])
        if n_path == 0 or "kernel_mask" not in entries:
            raise ValueError(f"stages.{s}.blocks.{b}.conv: paths / kernel_mask missing")
        mask = entries["kernel_mask"]
        weights = []
        for q in range(n_path):
            w = entries[f"paths.{q}.weight"]
            weights.append(w * mask[q].view(-1, 1, 1, 1).to(w.dtype))
        if merged or (merged is None and n_path == 1):
            out[prefix + "LoRA.weight"] = torch.stack(weights).sum(0)
        else:
            for q, w in enumerate(weights):
                out[prefix + f"LoRAs.{q}.weight"] = w
        for rest, value in entries.items():
            if bm := _OUR_SW_BN.match(rest):
                out[f"{prefix}{_BN_BRANCH_INV[bm[1]]}.{bm[2]}"] = value
            elif not (_OUR_SW_PATH.match(rest) or rest in _SW_BUFFERS):
                raise ValueError(
                    f"not a swconv ShiftWiseV2 state_dict; unexpected key stages.{s}.blocks.{b}.conv.{rest}"
                )
    return out
