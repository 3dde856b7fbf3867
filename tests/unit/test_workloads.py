"""The reference workloads: model sizes, one training batch each, data sets, bad input."""

import dataclasses
import filecmp
import json
import math
import shutil

import numpy as np
import pytest
import torch

from tbdprof.workloads import registry
from tbdprof.workloads._seq import BucketBatchSampler, lengths_index
from tbdprof.workloads.data import DataFormatError
from tbdprof.workloads.train import UsageError, build_parser, validate

NEW = ["inception_v3", "seq2seq", "transformer", "faster_rcnn", "deepspeech2", "wgan", "a3c"]


def lstm(inp, hidden, bidirectional=False):
    return (4 * hidden * (inp + hidden) + 8 * hidden) * (2 if bidirectional else 1)


def gru(inp, hidden):
    return 2 * (3 * hidden * (inp + hidden) + 6 * hidden)


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


# Closed-form parameter counts of each full model, written from the published
# layouts independently of the model code.
def transformer_base(vocab=37000, d=512, ffn=2048, layers=6):
    attn = 4 * (d * d + d)
    ff = d * ffn + ffn + ffn * d + d
    return vocab * d + layers * (attn + ff + 2 * 2 * d) + layers * (2 * attn + ff + 3 * 2 * d)


def nmt(src=17191, tgt=7709, h=512):
    return (src + tgt) * h + 2 * (lstm(h, h) * 2) + h * h + 2 * h * h + h * tgt


def deepspeech(freq=161, h=1024, layers=5, classes=29):
    c1 = 32 * 41 * 11 + 32 + 64
    c2 = 32 * 32 * 21 * 11 + 32 + 64
    rnn_in = 32 * 41  # 161 -> 81 -> 41 frequency rows
    return c1 + c2 + gru(rnn_in, h) + (layers - 1) * (gru(h, h) + 2 * h) + 2 * h + h * classes


def a3c(actions=18):
    return conv(4, 16, 8) + conv(16, 32, 4) + (2592 * 256 + 256) + (256 * actions + actions) + 257


def dcgan():
    g = 100 * 512 * 16 + 512 * 256 * 16 + 256 * 128 * 16 + 128 * 64 * 16 + 64 * 3 * 16 + 2 * (512 + 256 + 128 + 64)
    d = 3 * 64 * 16 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + 512 * 16 + 2 * (128 + 256 + 512)
    assert (g, d) == (3_576_704, 2_765_568)  # the figures PyTorch's DCGAN example prints
    return g + d


def faster_rcnn_r50_c4(anchors=15, classes=21):
    resnet50_no_fc = 25_557_032 - (2048 * 1000 + 1000)
    return resnet50_no_fc + conv(1024, 1024, 3) + conv(1024, anchors, 1) + conv(1024, 4 * anchors, 1) + (2048 * classes + classes) + (2048 * 4 * classes + 4 * classes)


CLOSED_FORM = {
    "inception_v3": 27_161_264,
    "transformer": transformer_base(),
    "seq2seq": nmt(),
    "deepspeech2": deepspeech(),
    "a3c": a3c(),
    "wgan": dcgan(),
    "faster_rcnn": faster_rcnn_r50_c4(),
}


@pytest.mark.parametrize("name", NEW)
def test_full_preset_has_the_reference_parameter_count(name):
    wl = registry.get(name)
    assert set(wl.presets) >= {"tiny", "small", "full"}
    assert wl.reference_source
    assert wl.param_count("full") == wl.reference_params["full"] == CLOSED_FORM[name]


def test_inception_without_aux_head_matches_torchvision():
    from tbdprof.workloads.inception import InceptionV3

    with torch.device("meta"):
        model = InceptionV3(aux=False)
    assert sum(p.numel() for p in model.parameters()) == 23_834_568


def test_transformer_base_is_the_papers_65m():
    assert abs(registry.get("transformer").param_count("full") - 65e6) / 65e6 < 0.05


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Each workload's tiny data set, written once for this module."""
    base = tmp_path_factory.mktemp("tiny")

    def get(name, seed=0):
        root = base / f"{name}-{seed}"
        if not root.exists():
            wl = registry.get(name)
            wl.write_dataset(root, wl.presets["tiny"], seed)
        return root

    return get


def first_batch(wl, root):
    ds = wl.dataset(root, wl.presets["tiny"])
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=wl.batch_sampler(sampler, wl.presets["tiny"].batch_size), collate_fn=wl.collate_fn)
    return next(iter(loader))


@pytest.mark.parametrize("name", NEW)
def test_tiny_model_trains_on_one_batch(name, tiny_data):
    wl = registry.get(name)
    torch.manual_seed(0)
    model = wl.build_model(wl.presets["tiny"])
    batch = first_batch(wl, tiny_data(name))
    assert wl.batch_items(batch) == wl.presets["tiny"].batch_size
    assert wl.batch_units(batch) >= wl.batch_items(batch)
    loss = wl.loss(model, batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NEW)
def test_step_hook_records_the_declared_phases(name, tiny_data):
    wl = registry.get(name)
    preset = wl.presets["tiny"]
    model = wl.build_model(preset)
    optimizer = wl.optimizer(model, preset)
    seen = []

    def phase(n):
        seen.append(n)
        return torch.autograd.profiler.record_function(n)

    averaged = []
    if not wl.train_step(model, optimizer, first_batch(wl, tiny_data(name)), phase, lambda params: averaged.append(list(params))):
        seen += ["forward", "backward", "optimizer"]  # the runner's own loop
    assert set(seen) == set(wl.phases)
    if name == "wgan":  # both halves are averaged through the engine, every time they are trained
        critic, generator = list(model.critic.parameters()), list(model.generator.parameters())
        assert averaged == [critic] * model.n_critic + [generator]
        assert [len(o.param_groups[0]["params"]) for o in (optimizer, *wl.other_optimizers())] == [len(critic), len(generator)]


@pytest.mark.parametrize("name", NEW)
def test_data_writer_is_deterministic(name, tiny_data, tmp_path):
    wl = registry.get(name)
    again = tmp_path / "again"
    wl.write_dataset(again, wl.presets["tiny"], 0)
    first = tiny_data(name)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    assert filecmp.cmpfiles(first, again, files, shallow=False)[0] == files
    other = tiny_data(name, seed=1)
    assert not filecmp.cmp(first / "shard-00000.bin", other / "shard-00000.bin", shallow=False)


@pytest.mark.parametrize("name", NEW)
def test_a_data_set_of_another_workload_is_rejected(name, tiny_data):
    wl = registry.get(name)
    other = "seq2seq" if name not in ("seq2seq", "transformer") else "deepspeech2"
    with pytest.raises(DataFormatError):
        wl.dataset(tiny_data(other), wl.presets["tiny"])


def test_translation_data_with_a_larger_vocabulary_is_rejected(tiny_data):
    wl = registry.get("transformer")
    tiny = wl.presets["tiny"]
    assert len(wl.dataset(tiny_data("seq2seq"), tiny)) > 0  # same fields, smaller vocabularies: fits
    small_vocab = dataclasses.replace(tiny, model=dict(tiny.model, vocab=100))
    with pytest.raises(DataFormatError, match="vocabularies"):
        wl.dataset(tiny_data("seq2seq"), small_vocab)


@pytest.mark.parametrize(
    "name, key, value, message",
    [
        ("deepspeech2", "lengths", None, "lengths"),
        ("deepspeech2", "alphabet", "abc", "alphabet"),
        ("seq2seq", "lengths", [3, 4], "lengths"),
        ("faster_rcnn", "classes", 99, "classes"),
    ],
)
def test_inconsistent_meta_is_a_format_error(name, key, value, message, tiny_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_data(name), root)
    meta = json.loads((root / "meta.json").read_text())
    meta[key] = value
    (root / "meta.json").write_text(json.dumps(meta))
    wl = registry.get(name)
    with pytest.raises(DataFormatError, match=message):
        wl.dataset(root, wl.presets["tiny"])


def test_bucketing_covers_every_sample_once_with_less_padding(tiny_data):
    wl = registry.get("seq2seq")
    ds = wl.dataset(tiny_data("seq2seq"), wl.presets["tiny"])
    lengths = lengths_index(ds)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, seed=0)
    batches = list(BucketBatchSampler(sampler, 16, lengths))
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    plain = list(torch.utils.data.BatchSampler(sampler, 16, drop_last=True))

    def padding(bs):
        return sum(len(b) * max(lengths[b]) - lengths[b].sum() for b in bs)

    assert padding(batches) < padding(plain) / 2
    sampler.set_epoch(1)
    assert list(BucketBatchSampler(sampler, 16, lengths)) != batches  # reshuffled every epoch


def test_translation_units_are_target_tokens(tiny_data):
    wl = registry.get("transformer")
    src, src_len, tgt_in, tgt_out = first_batch(wl, tiny_data("seq2seq"))
    assert (src_len == (src != 0).sum(1)).all()
    assert wl.batch_units((src, src_len, tgt_in, tgt_out)) == int((tgt_out != 0).sum())
    assert (tgt_in[:, 0] == 1).all()  # BOS


def args_for(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["seq2seq", "--preset", "huge"], "no preset 'huge'"),
        (["wgan", "--batch-size", "7"], "multiple of n_critic"),
        (["resnet50", "--fault", "kill", "--fault-step", "20"], "--fault-step must be below --steps"),
        (["resnet50", "--fault", "slow-step"], "--fault slow-step needs --slow-ms"),
        (["wgan", "--fault", "skip-collective"], "runs its own step"),
        (["resnet50", "--hang-s", "0"], "--hang-s must be positive"),
    ],
)
def test_bad_input_is_a_usage_error(argv, message):
    with pytest.raises(UsageError, match=message):
        validate(args_for(*argv))


def test_nms_keeps_the_best_of_overlapping_boxes():
    from tbdprof.workloads.faster_rcnn import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10.0]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    assert nms(boxes, scores, 0.7).tolist() == [1, 2]


def test_roi_align_samples_the_box_it_is_given():
    from tbdprof.workloads.faster_rcnn import roi_align

    # feature value = x coordinate of the pixel centre, in image pixels at stride 16
    xs = (torch.arange(8.0) + 0.5) * 16
    feats = xs.expand(1, 1, 8, 8).contiguous()
    crop = roi_align(feats, [torch.tensor([[32.0, 32.0, 96.0, 96.0]])], 2, 1 / 16)
    assert crop.shape == (1, 1, 2, 2)
    assert torch.allclose(crop[0, 0, 0], torch.tensor([48.0, 80.0]))  # centres of the two bins


def test_maze_rewards_reaching_the_goal_and_restarts():
    from tbdprof.workloads.a3c import Mazes

    walls = np.ones((1, 4, 4), dtype=bool)
    walls[0, 1, 1:3] = False
    levels = [walls, np.array([[1, 1]]), np.array([[1, 2]])]
    envs = Mazes(levels, size=8, frames=2)
    reward, done = envs.step(np.array([1]))  # up: a wall, stays
    assert reward.tolist() == pytest.approx([-0.01]) and not done[0]
    reward, done = envs.step(np.array([4 + 5]))  # an aliased "right" reaches the goal
    assert reward.tolist() == [1.0] and done[0]
    assert envs.pos.tolist() == [[1, 1]] and envs.stack.shape == (1, 2, 8, 8)
