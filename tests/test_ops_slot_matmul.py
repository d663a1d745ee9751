"""The tokenizer's and detokenizer's fused CPU kernels (volt.ops.slot_matmul): plan == reference, products ==
references (both directions), autograd of both layers, thread-count independence and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_outputs_equal, need_ext
from hypothesis import given, settings
from hypothesis import strategies as st

from volt.ops.slot_matmul import (
    BLOCK_VOXELS,
    detokenize_linear,
    slot_matmul_reference,
    slot_outer_reference,
    slot_plan,
    slot_plan_reference,
    tokenize_linear,
)

PLAN = ("order", "token", "groups", "blocks")
S = 125
ops = torch.ops.volt


@pytest.fixture(autouse=True)
def _kernel():
    need_ext("slot_matmul", "cpu")


def random_layout(num_voxels: int, num_tokens: int, seed: int, num_slots: int = S):
    """voxel2token covering every token when possible (as patchify gives), random slots, shuffled order."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, max(num_tokens, 1), (num_voxels,), generator=g)
    tok[: min(num_tokens, num_voxels)] = torch.arange(min(num_tokens, num_voxels))
    tok = tok[torch.randperm(num_voxels, generator=g)]
    return tok, torch.randint(0, num_slots, (num_voxels,), generator=g)


def problem(num_voxels: int, num_tokens: int, u_in: int, u_out: int, seed: int):
    """A detokenizer problem: tokens (T, U_in), weight (S·U_out, U_in), bias (U_out,), voxel2token, slot."""
    tok, slot = random_layout(num_voxels, num_tokens, seed)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randn(num_tokens, u_in, generator=g)
    weight = torch.randn(S * u_out, u_in, generator=g) / u_in**0.5
    bias = torch.randn(u_out, generator=g)
    return tokens, weight, bias, tok, slot


def expected(tokens, weight, bias, tok, slot):
    """The detokenizer's definition in float64: out[v] = weight.view(S, U_out, U_in)[slot_v] @ tokens[tok_v] + b."""
    w = weight.double().view(S, bias.shape[0], tokens.shape[1])
    return torch.bmm(w[slot], tokens.double()[tok].unsqueeze(2)).squeeze(2) + bias.double()


def expected_tokens(feat, weight, bias, tok, slot, num_tokens):
    """The tokenizer's definition in float64: the dense (T, S·C) slot buffer (duplicates summed) times weight."""
    c = feat.shape[1]
    buf = feat.double().new_zeros(num_tokens * S, c).index_add_(0, tok * S + slot, feat.double())
    return buf.view(num_tokens, S * c) @ weight.double().t() + bias.double()


@pytest.mark.parametrize("case", [(0, 0), (1, 1), (7, 3), (900, 40), (3 * BLOCK_VOXELS + 5, 400), (20000, 700)])
def test_plan_equals_reference(case):
    tok, slot = random_layout(*case, seed=sum(case))
    ext = ops.slot_plan(tok, slot, case[1], S)
    ref = slot_plan_reference(tok, slot, case[1], S)
    assert_outputs_equal(PLAN, ext, ref)
    order, token, groups, blocks = ext
    assert torch.equal(torch.sort(order.long()).values, torch.arange(case[0]))  # a permutation
    assert torch.equal(token.long(), tok[order.long()])
    assert groups.numel() == (blocks.numel() - 1) * S + 1


def test_plan_blocks_follow_the_voxel_count():
    """Token t's block is floor(voxels in earlier tokens / BLOCK_VOXELS): 10 voxels per token -> blocks of
    ceil(BLOCK_VOXELS / 10) tokens; each group's tokens lie in its block."""
    tok = torch.arange(1000).repeat_interleave(10)
    slot = torch.arange(10_000) % S
    _, token, groups, blocks = slot_plan(tok, slot, 1000, S)
    per_block = -(-BLOCK_VOXELS // 10)
    assert blocks.tolist() == [*range(0, 1000, per_block), 1000]
    for b in range(blocks.numel() - 1):
        lo, hi = groups[b * S].item(), groups[(b + 1) * S].item()
        assert bool(((token[lo:hi] >= blocks[b]) & (token[lo:hi] < blocks[b + 1])).all())


@pytest.mark.parametrize("case", [(1, 1, 16, 16), (300, 20, 16, 8), (20000, 700, 32, 48), (9000, 3000, 5, 7)])
def test_products_equal_references(case):
    """slot_matmul both ways (with and without bias) and slot_outer both ways == the references."""
    v, t, u_in, u_out = case
    tokens, weight, bias, tok, slot = problem(v, t, u_in, u_out, seed=v)
    plan = slot_plan(tok, slot, t, S)
    order, token, groups, _ = plan
    w = weight.view(S, u_out, u_in).transpose(1, 2).contiguous()  # (S, U_in, U_out)
    out = ops.slot_matmul(tokens, w, bias, *plan, v, False)
    torch.testing.assert_close(out, slot_matmul_reference(tokens, w, bias, *plan, v, False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), expected(tokens, weight, bias, tok, slot), atol=1e-5, rtol=1e-5)
    gout = torch.randn(v, u_out, generator=torch.Generator().manual_seed(5))
    wt = weight.view(S, u_out, u_in)
    for b in (None, torch.randn(u_in)):
        gt = ops.slot_matmul(gout, wt, b, *plan, t, True)
        torch.testing.assert_close(gt, slot_matmul_reference(gout, wt, b, *plan, t, True), atol=1e-4, rtol=1e-5)
    for a_is_token, (a, bm) in ((True, (tokens, gout)), (False, (gout, tokens))):
        gw = ops.slot_outer(a, bm, order, token, groups, S, a_is_token)
        torch.testing.assert_close(gw, slot_outer_reference(a, bm, order, token, groups, S, a_is_token),
                                   atol=1e-4, rtol=1e-5)


def test_autograd_matches_float64_definition():
    tokens, weight, bias, tok, slot = problem(2500, 120, 12, 20, seed=3)
    leaves = [x.clone().requires_grad_() for x in (tokens, weight, bias)]
    out = detokenize_linear(*leaves, tok, slot)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad(out, leaves, gout)
    leaves64 = [x.double().requires_grad_() for x in (tokens, weight, bias)]
    ref = expected(*leaves64, tok, slot)
    grads64 = torch.autograd.grad(ref, leaves64, gout.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, grads64):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-5)


def test_duplicate_token_slot_pairs():
    """Two voxels with one (token, slot): the same output row each (to rounding: a row's value comes from the
    register tile it falls in, and a compiler may contract multiply-adds differently per tile size, as the GPU
    machine's GCC did); both add into the token's gradient."""
    tokens, weight, bias, tok, slot = problem(600, 30, 16, 16, seed=11)
    tok = torch.cat([tok, tok[:50]])
    slot = torch.cat([slot, slot[:50]])
    leaf = tokens.clone().requires_grad_()
    out = detokenize_linear(leaf, weight, bias, tok, slot)
    torch.testing.assert_close(out[600:], out[:50], atol=1e-6, rtol=1e-6)
    out.sum().backward()
    ref = leaf.detach().clone().requires_grad_()
    expected(ref, weight, bias, tok, slot).sum().backward()
    torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-4, rtol=1e-5)


def test_tokenize_linear_autograd_matches_float64_definition():
    """Tokenizer direction: tokens without voxels get the bias; duplicates are summed; gradients of feat, weight
    and bias equal the float64 dense buffer's."""
    c, d, t = 6, 24, 160
    tok, slot = random_layout(3000, t - 10, seed=4)  # tokens 150..159 have no voxels
    tok, slot = torch.cat([tok, tok[:40]]), torch.cat([slot, slot[:40]])  # 40 duplicated (token, slot) pairs
    g = torch.Generator().manual_seed(8)
    feat, weight, bias = torch.randn(3040, c, generator=g), torch.randn(d, S * c, generator=g) / 20, torch.randn(d)
    leaves = [x.clone().requires_grad_() for x in (feat, weight, bias)]
    out = tokenize_linear(*leaves, tok, slot, t)
    gout = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, leaves, gout)
    leaves64 = [x.double().requires_grad_() for x in (feat, weight, bias)]
    ref = expected_tokens(*leaves64, tok, slot, t)
    grads64 = torch.autograd.grad(ref, leaves64, gout.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[150:], bias.expand(10, d))
    for a, b in zip(grads, grads64):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-5)


def test_results_do_not_depend_on_thread_count():
    tokens, weight, bias, tok, slot = problem(30000, 1200, 32, 32, seed=2)
    gout = torch.randn(30000, 32, generator=torch.Generator().manual_seed(4))
    feat, tweight = torch.randn(30000, 6), torch.randn(32, S * 6)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            leaves = [x.clone().requires_grad_() for x in (tokens, weight)]
            out = detokenize_linear(*leaves, bias, tok, slot)
            tleaves = [x.clone().requires_grad_() for x in (feat, tweight)]
            tout = tokenize_linear(*tleaves, bias, tok, slot, 1200)
            results.append((out, *torch.autograd.grad(out, leaves, gout), tout,
                            *torch.autograd.grad(tout, tleaves, tokens)))
    finally:
        torch.set_num_threads(threads)
    names = ("out", "grad_tokens", "grad_weight", "tokens", "grad_feat", "grad_tok_weight")
    for other in results[1:]:
        assert_outputs_equal(names, other, results[0])


@settings(max_examples=25, deadline=None)
@given(v=st.integers(0, 3000), t=st.integers(1, 200), u=st.sampled_from([1, 3, 16, 17]), seed=st.integers(0, 99))
def test_random_problems(v, t, u, seed):
    tokens, weight, bias, tok, slot = problem(v, t, u, u, seed)
    assert_outputs_equal(PLAN, ops.slot_plan(tok, slot, t, S),
                         slot_plan_reference(tok, slot, t, S))
    torch.testing.assert_close(detokenize_linear(tokens, weight, bias, tok, slot).double(),
                               expected(tokens, weight, bias, tok, slot), atol=1e-5, rtol=1e-5)


def test_bad_input_is_refused():
    tokens, weight, bias, tok, slot = problem(100, 10, 8, 8, seed=1)
    bad_tok = tok.clone()
    bad_tok[3] = 10
    with pytest.raises(ValueError, match=r"voxel2token\[3\] = 10 is outside \[0, 10\)"):
        ops.slot_plan(bad_tok, slot, 10, S)
    with pytest.raises(ValueError, match="voxel2token must lie in"):
        slot_plan_reference(bad_tok, slot, 10, S)
    bad_slot = slot.clone()
    bad_slot[0] = -1
    with pytest.raises(ValueError, match=r"slot\[0\] = -1 is outside"):
        ops.slot_plan(tok, bad_slot, 10, S)
    order, token, groups, blocks = slot_plan(tok, slot, 10, S)
    w = weight.view(S, 8, 8).transpose(1, 2).contiguous()
    broken = order.clone()
    broken[5] = 100
    with pytest.raises(ValueError, match="order/token entry out of range"):
        ops.slot_matmul(tokens, w, bias, broken, token, groups, blocks, 100, False)
    with pytest.raises(ValueError, match="order/token entry out of range"):  # checked by each slot's task
        ops.slot_outer(tokens, torch.zeros(100, 8), broken, token, groups, S, True)
    with pytest.raises(ValueError, match=r"groups must be a CPU int64 vector of length B\*S\+1"):
        ops.slot_matmul(tokens, w, bias, order, token, groups[:-1].contiguous(), blocks, 100, False)
    short = groups.clone()
    short[-1] -= 1
    with pytest.raises(ValueError, match="groups must run from 0 to V"):
        ops.slot_matmul(tokens, w, bias, order, token, short, blocks, 100, False)
    with pytest.raises(ValueError, match="float32"):
        ops.slot_matmul(tokens.double(), w, bias, order, token, groups, blocks, 100, False)
    with pytest.raises(ValueError, match="blocks must run from 0 to num_tokens"):
        ops.slot_matmul(torch.zeros(100, 8), weight.view(S, 8, 8), None, order, token, groups, torch.tensor([0, 5]),
                        10, True)
    big_tok, big_slot = random_layout(2 * BLOCK_VOXELS, 400, seed=3)
    order, token, groups, blocks = slot_plan(big_tok, big_slot, 400, S)
    assert blocks.numel() == 3
    with pytest.raises(ValueError, match="a group's token lies outside its block"):
        ops.slot_matmul(torch.zeros(2 * BLOCK_VOXELS, 8), weight.view(S, 8, 8), None, order, token, groups,
                        torch.tensor([0, 1, 400]), 400, True)
    big_broken = token.clone()
    big_broken[-1] = 400
    with pytest.raises(ValueError, match="order/token entry out of range"):  # the last block's task
        ops.slot_matmul(torch.zeros(2 * BLOCK_VOXELS, 8), weight.view(S, 8, 8), None, order, big_broken, groups,
                        blocks, 400, True)
    with pytest.raises(ValueError, match=r"weight must be \(S\*8, 8\)"):
        detokenize_linear(tokens, weight[:-1], bias, tok, slot)
    with pytest.raises(ValueError, match=r"weight must be \(8, S\*6\)"):
        tokenize_linear(torch.zeros(100, 6), torch.zeros(8, 7), bias, tok, slot, 10)


def test_layers_need_the_kernel_for_the_device():
    """No fallback: a device without volt's slot kernel is refused with the reason, before any op runs."""
    tokens, weight, bias, tok, slot = (x.to("meta") for x in problem(100, 10, 8, 8, seed=1))
    with pytest.raises(RuntimeError, match="no slot_matmul kernel for device 'meta'"):
        detokenize_linear(tokens, weight, bias, tok, slot)
    with pytest.raises(RuntimeError, match="no slot_matmul kernel for device 'meta'"):
        tokenize_linear(torch.zeros(100, 8, device="meta"), torch.zeros(8, S * 8, device="meta"), bias, tok, slot, 10)


def test_opcheck():
    """Schemas, fake kernels and dispatch of the ops (torch.compile readiness)."""
    tokens, weight, bias, tok, slot = problem(500, 30, 8, 8, seed=6)
    plan = slot_plan(tok, slot, 30, S)
    order, token, groups, _ = plan
    w = weight.view(S, 8, 8).transpose(1, 2).contiguous()
    torch.library.opcheck(ops.slot_plan.default, (tok, slot, 30, S))
    torch.library.opcheck(ops.slot_matmul.default, (tokens, w, bias, *plan, 500, False))
    torch.library.opcheck(ops.slot_matmul.default, (torch.randn(500, 8), w, None, *plan, 30, True))
    torch.library.opcheck(ops.slot_outer.default, (tokens, torch.randn(500, 8), order, token, groups, S, True))
