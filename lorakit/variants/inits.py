"""Initialisations that take A and B from the base weight and move that part out of it: PiSSA and OLoRA.

Both keep the layer's output unchanged at the start: ``W_res = W - s B0 A0`` replaces the base weight, so
``W_res + s B0 A0 = W``. The adapter therefore only works on the modified base; ``convert_to_lora`` turns a
trained one into a plain LoRA adapter relative to the original ``W`` (rank 2r, as peft's
``path_initial_model_for_weight_conversion``): ``s B A - s B0 A0 = s [B | -B0] [A ; A0]``.

- PiSSA (Meng et al. 2024): the top-r singular triplets, ``B = U_r sqrt(S_r / s)``, ``A = sqrt(S_r / s) V_r^T``;
  ``pissa_niter_K`` uses the randomised ``torch.svd_lowrank`` with K subspace iterations (fast on big weights).
- OLoRA (Buyukakyuz 2024): the QR decomposition ``W = Q R``, ``B = Q[:, :r]``, ``A = R[:r]``.
"""

from __future__ import annotations

import torch

from lorakit.layers import Linear, LoraLayer, weight_of


def is_weight_init(init: bool | str) -> bool:
    """True for the inits that change the base weight ("pissa", "pissa_niter_K", "olora")."""
    return isinstance(init, str) and (init == "olora" or init.startswith("pissa"))


def init_from_weight(layer: LoraLayer, name: str, init: str) -> None:
    """Set adapter ``name``'s A and B from the base weight by ``init`` and subtract ``s B A`` from the weight."""
    if not isinstance(layer, Linear):
        raise TypeError(f"init_lora_weights={init!r} is implemented for Linear layers only, not {type(layer).__name__}")
    weight = weight_of(layer.base_layer)
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"init_lora_weights={init!r} needs a floating-point base weight, got {weight.dtype}")
    r, scaling = layer.r[name], layer.scaling[name]
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(dtype)
    w = w.T if layer.fan_in_fan_out else w  # (out, in)
    if init == "olora":
        q, rr = torch.linalg.qr(w)  # (out, k), (k, in)
        b, a = q[:, :r], rr[:r]
    else:
        if init == "pissa":
            u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        else:
            niter = int(init.removeprefix("pissa_niter_"))
            u, s, v = torch.svd_lowrank(w, q=r, niter=niter)
            vh = v.T
        root = torch.sqrt(s[:r] / scaling)  # (r,)
        b, a = u[:, :r] * root, root[:, None] * vh[:r]  # (out, r), (r, in)
    lora_A, lora_B = weight_of(layer.lora_A[name]), weight_of(layer.lora_B[name])
    with torch.no_grad():
        lora_A.copy_(a)
        lora_B.copy_(b)
        residual = w - scaling * (b @ a)  # (out, in)
        weight.copy_((residual.T if layer.fan_in_fan_out else residual).to(weight.dtype))


def convert_to_lora(tensors: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File tensors of a trained PiSSA/OLoRA adapter -> a plain LoRA adapter of twice the rank on the original W.

    ``initial`` holds the same keys as saved right after initialisation. ``s`` stays the same if the config's
    ``r`` and ``lora_alpha`` are both doubled (``alpha * sqrt(2)`` with rsLoRA).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if ".lora_A." in key or ".lora_B." in key:
            if key not in initial:
                raise KeyError(key)
            start = initial[key].to(value.dtype)
            if ".lora_A." in key:
                out[key] = torch.cat([value, start], dim=0)  # (2r, in)
            else:
                out[key] = torch.cat([value, -start], dim=1)  # (out, 2r)
        else:
            out[key] = value
    return out
