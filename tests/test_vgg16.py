"""VGG-16 beside VGG-19: layer names, the network recorded in the weight file, conversion from
every published layout (Keras h5, torchvision/Caffe .pth, ONNX in the tf2onnx and model-zoo
shapes), and one clear sentence for each wrong-network or non-VGG input."""

from __future__ import annotations

import http.server
import threading

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import vgg
from nst_jax.weights import convert, torch_import
from nst_jax.weights import file as weights_file
from nst_jax.weights import sources as weights_sources
from nst_jax.weights import store as weights_store
from nst_jax import preprocessing as prep_lib
from nst_jax.weights import container as weights_lib
from nst_jax.cli import main
from nst_jax.errors import NstError
from nst_jax.features import extract_features


def test_vgg16_layers_and_shapes():
    assert vgg.conv_layers("vgg16")[-1] == "conv5_3" and len(vgg.conv_layers("vgg16")) == 13
    assert len(vgg.all_layers("vgg16")) == 13 * 2 + 5
    shapes = weights_lib.expected_shapes("vgg16")
    assert tuple(shapes) == vgg.conv_layers("vgg16")
    assert shapes["conv3_3"]["kernel"] == (3, 3, 256, 256)
    assert shapes["conv4_1"]["kernel"] == (3, 3, 256, 512)
    assert vgg.canonical_layer("block5_conv3", "vgg16") == "relu5_3"


@pytest.mark.parametrize("layer", ["relu5_4", "conv3_4", "block4_conv4"])
def test_vgg19_layer_on_vgg16_weights_is_one_sentence(layer):
    w = weights_lib.random_weights(0, network="vgg16")
    with pytest.raises(NstError) as err:
        extract_features(w, jnp.zeros((32, 32, 3)), ("relu1_1", layer))
    msg = str(err.value)
    assert "\n" not in msg and "VGG-19" in msg and "VGG-16" in msg
    assert "conv5_1..conv5_3" in msg and "pool1..pool5" in msg


@pytest.mark.slow
def test_vgg16_forward_matches_plain_numpy_chain(vgg16_params):
    """Every VGG-16 activation against a float64 NumPy network written from the definition."""
    w = weights_lib.VGGWeights(
        params={k: {n: jnp.asarray(a) for n, a in v.items()} for k, v in vgg16_params.items()},
        preprocessing=prep_lib.KERAS,
        network="vgg16",
    )
    x = np.random.default_rng(0).uniform(size=(36, 34, 3)).astype(np.float32)
    got = extract_features(w, jnp.asarray(x), vgg.all_layers("vgg16"))
    h = (x[..., ::-1].astype(np.float64) * 255 - np.array([103.939, 116.779, 123.68]))
    for name in vgg.all_layers("vgg16"):
        if name.startswith("conv"):
            p = vgg16_params[name]
            pad = np.pad(h, ((1, 1), (1, 1), (0, 0)))
            out = np.zeros(h.shape[:2] + (p["kernel"].shape[-1],))
            for i in range(3):
                for j in range(3):
                    out += pad[i : i + h.shape[0], j : j + h.shape[1]] @ p["kernel"][i, j]
            h = out + p["bias"]
        elif name.startswith("relu"):
            h = np.maximum(h, 0)
        else:
            hh, ww = h.shape[0] // 2 * 2, h.shape[1] // 2 * 2
            h = h[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, -1).max(axis=(1, 3))
        scale = max(1.0, np.abs(h).max())
        np.testing.assert_allclose(np.asarray(got[name]) / scale, h / scale, atol=2e-5,
                                   err_msg=name)


def _same_arrays(a_path, b_path):
    a, b = weights_file.load_weights(a_path), weights_file.load_weights(b_path)
    assert a.network == b.network
    for layer in a.params:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(a.params[layer][leaf]),
                                          np.asarray(b.params[layer][leaf]))


@pytest.mark.slow
@pytest.mark.parametrize("style", ["zoo", "tf2onnx"])
def test_onnx_vgg16_equals_keras_h5_of_the_same_arrays(tmp_path, vgg16_params, onnx_writer,
                                                       keras_h5_writer, style):
    onnx_path = onnx_writer(tmp_path / "model.onnx", vgg16_params, network="vgg16", style=style)
    h5_path = keras_h5_writer(tmp_path / "vgg16_notop.h5", vgg16_params, network="vgg16")
    a = convert.convert_weights(onnx_path, tmp_path / "a.nst.h5", preprocessing="caffe")
    b = convert.convert_weights(h5_path, tmp_path / "b.nst.h5")
    _same_arrays(a, b)
    info_a, info_b = weights_file.read_info(a), weights_file.read_info(b)
    assert (info_a.network, info_a.layout, info_b.layout) == ("vgg16", "onnx", "keras")
    assert info_a.preprocessing == info_b.preprocessing
    with h5py.File(a) as fa, h5py.File(b) as fb:
        differ = {k for k in fa.attrs if str(fa.attrs[k]) != str(fb.attrs[k])}
    assert differ == {"source_file", "source_sha256", "layout"}


@pytest.mark.slow
def test_onnx_vgg19_zoo_with_torchvision_preprocessing(tmp_path, vgg_params, onnx_writer):
    src = onnx_writer(tmp_path / "vgg19-7.onnx", vgg_params, network="vgg19")
    out = convert.convert_weights(src, tmp_path / "v.nst.h5", preprocessing="torchvision")
    w = weights_file.load_weights(out)
    assert w.network == "vgg19" and w.preprocessing == prep_lib.TORCHVISION
    np.testing.assert_array_equal(np.asarray(w.params["conv5_4"]["kernel"]),
                                  vgg_params["conv5_4"]["kernel"])


def _cli_fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.slow
def test_onnx_errors_are_one_sentence_and_write_nothing(tmp_path, vgg16_params, onnx_writer,
                                                        capsys):
    out = tmp_path / "out.nst.h5"
    good = onnx_writer(tmp_path / "good.onnx", vgg16_params, network="vgg16")
    _cli_fails(capsys, ["weights", "convert", str(good), "-o", str(out)], "--preprocessing")
    _cli_fails(capsys, ["weights", "convert", str(good), "-o", str(out), "--preprocessing",
                        "caffe", "--model", "vgg19"], "VGG-16", "VGG-19 is required")
    bn = onnx_writer(tmp_path / "bn.onnx", vgg16_params, network="vgg16", batch_norm=True)
    _cli_fails(capsys, ["weights", "convert", str(bn), "-o", str(out), "--preprocessing",
                        "caffe"], "batch-norm")
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(g), str(tmp_path / "relu.onnx"))
    _cli_fails(capsys, ["weights", "convert", str(tmp_path / "relu.onnx"), "-o", str(out),
                        "--preprocessing", "caffe"], "no VGG-shaped")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 not a protobuf at all" * 10)
    _cli_fails(capsys, ["weights", "convert", str(tmp_path / "junk.onnx"), "-o", str(out),
                        "--preprocessing", "caffe"], "junk.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bn.onnx", "good.onnx", "junk.onnx", "relu.onnx"]


def test_vgg16_file_where_vgg19_is_required(tmp_path, vgg16_params, keras_h5_writer, capsys):
    src = keras_h5_writer(tmp_path / "vgg16.h5", vgg16_params, network="vgg16")
    _cli_fails(capsys, ["weights", "convert", str(src), "-o", str(tmp_path / "o.nst.h5"),
                        "--model", "vgg19"], "holds VGG-16 weights", "VGG-19 is required")
    assert not (tmp_path / "o.nst.h5").exists()
    path = convert.convert_weights(src, tmp_path / "v16.nst.h5")
    with pytest.raises(NstError, match="holds VGG-16 weights, but VGG-19 is required"):
        weights_file.load_weights(path, network="vgg19")
    with pytest.raises(NstError, match="holds VGG-16 weights"):
        weights_store.resolve_weights(str(path), network="vgg19")
    assert main(["weights", "info", str(path)]) == 0
    assert "network:       VGG-16" in capsys.readouterr().out


@pytest.mark.slow
def test_torch_state_dicts_of_vgg16(tmp_path, vgg16_params):
    torch = pytest.importorskip("torch")
    state = {}
    for layer, index in torch_import.torch_feature_index("vgg16").items():
        state[f"features.{index}.weight"] = torch.from_numpy(
            vgg16_params[layer]["kernel"].transpose(3, 2, 0, 1).copy())
        state[f"features.{index}.bias"] = torch.from_numpy(vgg16_params[layer]["bias"])
    state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    for layout in ("torchvision", "caffe"):
        out = convert.convert_weights(tmp_path / "vgg16-397923af.pth",
                                      tmp_path / f"{layout}.nst.h5", layout=layout)
        w = weights_file.load_weights(out)
        assert w.network == "vgg16" and w.preprocessing == convert.PREPROCESSING[layout]
        np.testing.assert_array_equal(np.asarray(w.params["conv5_3"]["kernel"]),
                                      vgg16_params["conv5_3"]["kernel"])
    with pytest.raises(NstError, match="holds VGG-16 weights, but VGG-19 is required"):
        torch_import.read_torch_state_dict(tmp_path / "vgg16-397923af.pth", network="vgg19")


def test_legacy_version_1_file_reads_as_vgg19(tmp_path, vgg_params):
    path = weights_file.save_weights(tmp_path / "old.nst.h5", vgg_params, prep_lib.KERAS,
                                    source_file="x.h5", source_sha256="0" * 64, layout="keras")
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "nst-jax-vgg19"
        f.attrs["format_version"] = 1
        del f.attrs["network"]
    w = weights_file.load_weights(path)
    assert w.network == "vgg19" and "VGG-19" in w.label


def test_vgg16_sources_and_download_from_local_server(tmp_path, keras_h5_writer):
    src = weights_sources.VGG16_SOURCES
    assert src["keras"].hash == "6d6bbae143d832006294945121d1f1fc"
    assert src["torchvision"].filename == "vgg16-397923af.pth"
    assert src["torchvision"].hash.startswith("397923af") and len(src["torchvision"].hash) == 64
    assert src["caffe"].filename == "vgg16-00b39a1b.pth" and src["caffe"].hash == "00b39a1b"
    params = {layer: {k: np.full(s, 0.01, np.float32) for k, s in shapes.items()}
              for layer, shapes in weights_lib.expected_shapes("vgg16").items()}
    served = tmp_path / "served"
    served.mkdir()
    raw = keras_h5_writer(served / src["keras"].filename, params, network="vgg16",
                          compression="gzip")
    import functools
    import hashlib

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{raw.name}"
        digest = hashlib.sha256(raw.read_bytes()).hexdigest()
        dest = tmp_path / "cache"
        assert main(["weights", "download", "--model", "vgg16", "--dest", str(dest), "--url", url,
                     "--sha256", digest, "--quiet"]) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(p.name for p in dest.iterdir()) == ["vgg16-keras.nst.h5"]
    assert weights_file.load_weights(dest / "vgg16-keras.nst.h5").network == "vgg16"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["dims", "undefined", "string", "unused"])
def test_damaged_onnx_initializers_are_refused_in_one_sentence(tmp_path, vgg16_params,
                                                               onnx_writer, capsys, damage):
    import onnx
    from onnx import TensorProto, helper

    src = onnx_writer(tmp_path / "m.onnx", vgg16_params, network="vgg16")
    model = onnx.load(str(src))
    inits = model.graph.initializer
    bias = next(t for t in inits if t.name == "vgg0_conv0_bias")
    if damage == "dims":
        bias.dims[0] = 65  # 64 values stored
    elif damage == "undefined":
        bias.data_type = TensorProto.UNDEFINED
    elif damage == "string":
        bias.CopyFrom(helper.make_tensor("vgg0_conv0_bias", TensorProto.STRING, [1], [b"x"]))
    else:  # a tensor no node reads, with dims that do not match its data
        junk = helper.make_tensor("junk", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
        junk.dims[0] = 7
        inits.append(junk)
    onnx.save(model, str(src))
    out = tmp_path / "o.nst.h5"
    _cli_fails(capsys, ["weights", "convert", str(src), "-o", str(out), "--preprocessing",
                        "caffe"], "is damaged", "junk" if damage == "unused" else "vgg0_conv0_bias")
    assert not out.exists()
