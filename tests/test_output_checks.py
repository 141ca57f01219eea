"""Outputs checked before the work: a read-only folder (a tmpfs mounted
read-only, which stops root too), a file where a folder should be, or a
folder where a file should be fail every tool at once with one line naming
the path; the tools say what they replace, vis_clusters removes its own
stale files, files get the user's umask mode and the converter writes
through a rename (a full disk leaves the old file)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fec_mm.deployment import pytorch2onnx
from fec_mm.deployment.onnx_export import save_onnx
from fec_mm.outputs import OutputPathError, check_output_dir, check_output_file
from fec_mm.visualization import cli as vis_cli

REPO = Path(__file__).resolve().parents[1]
DET_CONFIG = REPO / 'configs' / 'demo' / 'fec_maskrcnn_demo.py'
SEMFPN_DEMO = str(REPO / 'configs' / 'demo' / 'fec_semfpn_demo.py')
sys.path.insert(0, str(REPO / 'tools' / 'model_converters'))
import fec_reference_to_mm  # noqa: E402
import publish_model  # noqa: E402


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture(scope='module')
def read_only(tmp_path_factory):
    """An empty read-only folder: a tmpfs mounted ro (root ignores chmod)."""
    path = tmp_path_factory.mktemp('ro') / 'mnt'
    if not _mount(path, 'ro,size=64k'):
        if os.geteuid() == 0:
            pytest.skip('a read-only folder for root needs mount -t tmpfs -o ro')
        path.chmod(0o555)
    yield path
    subprocess.run(['umount', str(path)], check=False)


@pytest.fixture(autouse=True)
def _keep_default_scope():
    """The configs' tools and the inferencer set mmengine's default scope;
    later tests in the session get the one they had."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict = saved


def _not_called(*args, **kwargs):
    raise AssertionError('the work started before the output was checked')


def _tool(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_output_checks_name_the_path(read_only, tmp_path):
    with pytest.raises(OutputPathError, match=rf'--out {read_only}/a.onnx: cannot write in '
                       rf'{read_only} \(Read-only file system|Permission denied\)'):
        check_output_file(str(read_only / 'a.onnx'), '--out')
    with pytest.raises(OutputPathError, match=rf'{read_only}/new/deeper: cannot write in '
                       rf'{read_only} '):
        check_output_dir(str(read_only / 'new' / 'deeper'))
    (tmp_path / 'file').write_text('x')
    with pytest.raises(OutputPathError, match=rf'output {tmp_path}/file/a.json: {tmp_path}/file '
                       'is a file, not a folder'):
        check_output_file(str(tmp_path / 'file' / 'a.json'))
    with pytest.raises(OutputPathError, match=rf'--out-dir {tmp_path}/file: is a file'):
        check_output_dir(str(tmp_path / 'file'), '--out-dir')
    with pytest.raises(OutputPathError, match=rf'output {tmp_path}: is a folder, not a file'):
        check_output_file(str(tmp_path))
    # Writable: a missing folder (created later by the tool) is fine; an
    # existing file is reported (it will be replaced); the probe is gone.
    assert check_output_file(str(tmp_path / 'new' / 'a.onnx')) is False
    assert check_output_file(str(tmp_path / 'file')) is True
    check_output_dir(str(tmp_path / 'new'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_every_tool_refuses_an_unwritable_output_before_the_work(read_only, tmp_path,
                                                                 monkeypatch, capsys):
    image = tmp_path / 'img.png'
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    checkpoint = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {}}, checkpoint)

    monkeypatch.setattr(vis_cli, 'prepare_from_arch', _not_called)
    assert vis_cli.main([str(image), '--arch', 'small', '--out-dir',
                         str(read_only / 'vis')]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'vis_clusters: error: --out-dir {read_only}/vis: cannot write in '
                          f'{read_only} (') and err.count('\n') == 1

    quality = _tool('cluster_quality_tool', REPO / 'tools' / 'analysis_tools' /
                    'cluster_quality.py')
    monkeypatch.setattr(quality, 'evaluate_partitions', _not_called)
    with pytest.raises(SystemExit, match=rf'^cluster_quality: --out {read_only}/q.json: '
                       'cannot write in'):
        quality.main([str(DET_CONFIG), '--out', str(read_only / 'q.json')])

    monkeypatch.setattr(pytorch2onnx, 'build_model', _not_called)
    for out, reason in ((read_only / 'm.onnx', 'cannot write in'),
                        (tmp_path, 'is a folder, not a file name')):
        with pytest.raises(SystemExit):
            pytorch2onnx.main([SEMFPN_DEMO, '--shape', '64', '64', '--out', str(out)])
        err = capsys.readouterr().err
        assert f'error: --out {out}: {reason}' in err and err.count('\n') == 1

    from fec_mm.checkpoints import publish
    monkeypatch.setattr(publish, 'load_checkpoint_file', _not_called)
    with pytest.raises(SystemExit):
        publish_model.main([str(checkpoint), str(read_only / 'p.pth')])
    assert f'error: publish: output {read_only}/p.pth: cannot write in' in capsys.readouterr().err

    from fec_mm.models import authors_checkpoint
    monkeypatch.setattr(authors_checkpoint, 'load_checkpoint_file', _not_called)
    with pytest.raises(SystemExit):
        fec_reference_to_mm.main([str(checkpoint), str(image / 'c.pth')])
    assert f'error: output {image}/c.pth: {image} is a file, not a folder' in \
        capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pth', 'img.png']


def test_converter_and_publish_on_a_full_disk_and_replacing(tmp_path, capsys):
    from test_checkpoint import reference_state_dict
    src = tmp_path / 'reference.pth'
    torch.save({'model': reference_state_dict()}, src)
    disk = tmp_path / 'disk'
    if not _mount(disk, 'size=256k'):
        pytest.skip('mounting a small tmpfs needs root (mount -t tmpfs)')
    try:
        dst = disk / 'fec_small.pth'
        dst.write_bytes(b'old')
        with pytest.raises(SystemExit):  # the converted file does not fit
            fec_reference_to_mm.main([str(src), str(dst)])
        err = capsys.readouterr().err
        assert f'cannot write {dst}: ' in err and err.count('\n') == 1
        assert dst.read_bytes() == b'old' and os.listdir(disk) == ['fec_small.pth']
        trained = tmp_path / 'trained.pth'
        torch.save({'state_dict': reference_state_dict(), 'meta': {}}, trained)
        with pytest.raises(SystemExit):
            publish_model.main([str(trained), str(disk / 'pub.pth')])
        err = capsys.readouterr().err
        assert f'publish: cannot write {disk}/pub.pth.partial: ' in err and err.count('\n') == 1
        assert os.listdir(disk) == ['fec_small.pth']
    finally:
        subprocess.run(['umount', str(disk)], check=False)
    dst = tmp_path / 'fec_small.pth'
    fec_reference_to_mm.main([str(src), str(dst)])
    assert '(replaced the existing' not in capsys.readouterr().out
    fec_reference_to_mm.main([str(src), str(dst)])
    assert capsys.readouterr().out.rstrip().endswith('(replaced the existing file)')
    assert torch.load(dst, weights_only=True)['state_dict']


def test_publish_says_it_replaced_an_identical_file(tmp_path, capsys):
    checkpoint = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': {'epoch': 1}}, checkpoint)
    first = publish_model.main([str(checkpoint), str(tmp_path / 'pub.pth')])
    assert '(replaced the existing' not in capsys.readouterr().out
    assert publish_model.main([str(checkpoint), str(tmp_path / 'pub.pth')]) == first
    assert capsys.readouterr().out.rstrip().endswith('(replaced the existing identical file)')


@pytest.mark.parametrize('umask', [0o022, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])
    proto = helper.make_model(helper.make_graph(
        [helper.make_node('Relu', ['x'], ['y'])], 'g', [x],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4])]))
    quality = _tool('cluster_quality_tool', REPO / 'tools' / 'analysis_tools' /
                    'cluster_quality.py')
    old = os.umask(umask)
    try:
        save_onnx(proto, str(tmp_path / 'm.onnx'))
        quality.write_json_atomic({'a': 1}, str(tmp_path / 'q.json'))
    finally:
        os.umask(old)
    for name in ('m.onnx', 'q.json'):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_vis_clusters_removes_its_own_stale_files_and_says_so(tmp_path, capsys):
    image = tmp_path / 'cat.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(image)
    out = tmp_path / 'out'
    first = vis_cli.run([str(image), '--arch', 'small', '--groups', '3', '--json',
                         '--out-dir', str(out)])
    assert (out / 'cat_merged_k3.png').exists() and (out / 'cat_clusters.json').exists()
    (out / 'dog_merged_k3.png').write_bytes(b'another image')  # not this image's
    (out / 'cat_notes.png').write_bytes(b'not vis_clusters')
    capsys.readouterr()
    second = vis_cli.run([str(image), '--arch', 'small', '--out-dir', str(out)])
    err = capsys.readouterr().err
    assert f'replaced {len(second)} files of an earlier run in {out}' in err
    assert 'removed 2 files of an earlier run' in err and 'cat_merged_k3.png' in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [Path(p).name for p in second] + ['dog_merged_k3.png', 'cat_notes.png'])
    assert len(first) == len(second) + 2


def test_vis_clusters_names_empty_and_degenerate_images(tmp_path):
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    with pytest.raises(ValueError, match=rf'cannot read image {empty}: the file is empty'):
        vis_cli.run([str(empty), '--arch', 'small', '--out-dir', str(tmp_path / 'out')])
    thin = tmp_path / 'thin.png'
    Image.fromarray(np.zeros((5000, 3, 3), np.uint8)).save(thin)
    with pytest.raises(ValueError, match=rf'image {thin} \(3x5000 pixels\): Resize failed: '
                       'resizing it leaves a side of 0 pixels'):
        vis_cli.run([str(thin), str(DET_CONFIG), '--out-dir', str(tmp_path / 'out')])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty.jpg', 'thin.png']


def test_inference_with_a_config_names_empty_and_degenerate_images(tmp_path):
    """mmdet's DetInferencer on fec-mm's demo config (its test pipeline, as
    the libraries' APIs load it): OpenCV's assertions become errors naming
    the file and the cause."""
    from mmdet.apis import DetInferencer

    from fec_mm.images import ImageError
    inferencer = DetInferencer(model=str(DET_CONFIG), weights=None, device='cpu',
                               show_progress=False)
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    with pytest.raises(ImageError, match=rf'image {empty}: LoadImageFromFile failed: the file '
                       r'is empty \(0 bytes\)'):
        inferencer(str(empty))
    thin = tmp_path / 'thin.png'
    Image.fromarray(np.zeros((5000, 3, 3), np.uint8)).save(thin)
    with pytest.raises(ImageError, match=rf'image {thin} \(3x5000 pixels\): Resize failed: '
                       'resizing it leaves a side of 0 pixels'):
        inferencer(str(thin))
