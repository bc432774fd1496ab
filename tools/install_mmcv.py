"""Build (or reuse) mmcv with its compiled ops for the torch in this environment.

PyPI only has mmcv's source distribution for modern torch, so the compiled ops
(NMS, RoIAlign, ...) that Mask R-CNN and Cascade Mask R-CNN need must be built
locally. Two distributions provide the ``mmcv`` module: upstream ``mmcv`` (2.1.0, for
mmdet 3.3.0) and the maintained fork ``onedl-mmcv`` (2.3.6, for onedl-mmdetection).
``--dist`` chooses; by default the one already installed, else the one that matches the
installed mmengine (``onedl-mmengine`` -> ``onedl-mmcv``), else ``mmcv``. The script never
installs one distribution over the other (same import name): it refuses instead.
This script:

1. returns at once if the requested mmcv is installed and its ops work;
2. otherwise installs a cached wheel keyed by distribution, version, torch, Python and
   CPU/CUDA versions (``$CONVNEXT_DENSE_CACHE``, default
   ``~/.cache/convnext_dense/wheels``), when one exists;
3. otherwise takes the sdist (``--sdist FILE``, or downloads it), rewrites its
   ``-std=c++14/17`` flags to ``-std=c++20`` when the installed torch headers need
   C++20, builds a wheel (CUDA ops when torch sees a GPU and a CUDA toolchain, CPU ops otherwise),
   caches it and installs it;
4. verifies the result by running an NMS and a RoIAlign in a fresh process (and that the
   ``mmcv`` module belongs to the requested distribution).

Any failure ends with a non-zero exit code and a message saying what failed.

Usage: ``python tools/install_mmcv.py [--dist mmcv|onedl-mmcv] [--version V] [--force-build]
[--sdist FILE]``
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

# distribution providing the ``mmcv`` module -> its verified version
DISTRIBUTIONS = {'mmcv': '2.1.0', 'onedl-mmcv': '2.3.6'}
# the mmengine distribution of each stack -> that stack's mmcv distribution
MMCV_FOR_MMENGINE = {'mmengine': 'mmcv', 'onedl-mmengine': 'onedl-mmcv'}
#: What either mmcv needs at run time beside torch and mmengine (the wheel is installed with
#: --no-deps, so that pip never touches torch).
RUNTIME_REQUIREMENTS = ('addict', 'numpy', 'opencv-python', 'packaging', 'Pillow', 'pyyaml',
                        'yapf')

VERIFY_SNIPPET = """
import importlib.metadata
# the installed distribution first: a missing or other one fails before torch loads
dist = importlib.metadata.distribution({dist!r})  # the mmcv module is this distribution's
assert dist.version == {version!r}, dist.version
assert 'mmcv/__init__.py' in {{str(f).replace(chr(92), '/') for f in dist.files or ()}}, dist
import mmcv, torch
from mmcv.ops import nms, roi_align
assert mmcv.__version__ == {version!r}, mmcv.__version__
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
scores = torch.tensor([0.9, 0.8, 0.7])
_, keep = nms(boxes, scores, iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep
feat = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
rois = torch.tensor([[0., 0., 0., 4., 4.]])
out = roi_align(feat, rois, (2, 2), 1.0, 2, 'avg', True)
assert out.shape == (1, 1, 2, 2), out.shape
if {cuda!r}:  # the CUDA kernels give the CPU kernels' results
    _, keep_gpu = nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
    assert keep_gpu.tolist() == [0, 2], keep_gpu
    out_gpu = roi_align(feat.cuda(), rois.cuda(), (2, 2), 1.0, 2, 'avg', True)
    assert torch.allclose(out_gpu.cpu(), out, atol=1e-5), (out_gpu, out)
print('mmcv', mmcv.__version__, 'ops OK on', 'cuda' if {cuda!r} else 'cpu')
"""


class InstallError(RuntimeError):
    """A step of the mmcv installation failed."""


def log(msg: str) -> None:
    print(f'[install_mmcv] {msg}', flush=True)


def run(cmd: list[str], **kwargs) -> None:
    log('$ ' + ' '.join(cmd))
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        raise InstallError(f'command failed with exit code {result.returncode}: {" ".join(cmd)}')


def cuda_ops_choice() -> tuple[bool, str]:
    """Whether to build mmcv's CUDA ops, and why (or why not).

    CUDA ops need a CUDA build of torch, a GPU that torch sees, and a CUDA toolchain
    (``nvcc`` under ``CUDA_HOME``, as torch's ``cpp_extension`` finds it).
    """
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        raise InstallError('torch must be installed before mmcv is built '
                           f'(import failed: {exc})') from exc
    if not torch.version.cuda:
        return False, f'torch {torch.__version__} is a CPU-only build'
    if not torch.cuda.is_available():
        return False, f'torch (CUDA {torch.version.cuda}) sees no GPU'
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None:
        return False, (f'torch (CUDA {torch.version.cuda}) sees a GPU, but no CUDA toolchain '
                       'was found (CUDA_HOME is not set and no nvcc on PATH)')
    if shutil.which('nvcc', path=os.path.join(cuda_home, 'bin')) is None:
        return False, (f'torch (CUDA {torch.version.cuda}) sees a GPU, but there is no nvcc '
                       f'in CUDA_HOME={cuda_home}/bin')
    return True, f'torch (CUDA {torch.version.cuda}) sees a GPU and nvcc is in {cuda_home}/bin'


def torch_info() -> tuple[str, str | None, bool]:
    """Return (torch version, CUDA version of the build or None, build CUDA ops?)."""
    import torch  # cuda_ops_choice() raised InstallError if it is missing
    with_cuda, _ = cuda_ops_choice()
    return torch.__version__.split('+')[0], torch.version.cuda, with_cuda


def log_ops_choice() -> None:
    """Say which ops will be built and why; warn when a GPU gets CPU-only ops."""
    with_cuda, reason = cuda_ops_choice()
    if with_cuda:
        log(f'CUDA ops: {reason}')
        return
    import torch
    if torch.version.cuda and torch.cuda.is_available():
        log(f'WARNING: CPU-only ops although a GPU is visible: {reason}. mmcv ops on CUDA '
            'tensors (RoIAlign, NMS, ...) will fail. Install the CUDA toolkit matching torch '
            f'(CUDA {torch.version.cuda}), set CUDA_HOME, and rerun with --force-build.')
    else:
        log(f'CPU ops: {reason}')


def torch_needs_cxx20() -> bool:
    import torch
    aten_header = Path(torch.__file__).parent / 'include' / 'ATen' / 'ATen.h'
    return aten_header.is_file() and 'C++20' in aten_header.read_text(errors='ignore')


def module_distributions(module: str) -> list[str]:
    """The installed distributions that provide the top-level ``module`` (e.g. ``mmcv``)."""
    import importlib
    from importlib import metadata
    importlib.invalidate_caches()
    return sorted(set(metadata.packages_distributions().get(module, [])))


def choose_distribution(requested: str | None, mmcv_dists: list[str],
                        mmengine_dists: list[str]) -> str:
    """The mmcv distribution to install, given what provides ``mmcv`` and ``mmengine`` now.

    ``requested`` (``--dist``) wins, unless another distribution already provides the
    ``mmcv`` module: installing it would overwrite that one's files, so that is refused.
    Without a request: the installed one, else the one of the installed mmengine's stack,
    else upstream ``mmcv``.
    """
    if requested is not None and requested not in DISTRIBUTIONS:
        raise InstallError(f'--dist {requested!r} is not supported; choose one of '
                           f'{", ".join(DISTRIBUTIONS)}')
    unknown = [d for d in mmcv_dists if d not in DISTRIBUTIONS]
    if unknown or len(mmcv_dists) > 1:
        raise InstallError(
            f'the mmcv module here is provided by {", ".join(mmcv_dists)}; this script builds '
            f'only {" or ".join(DISTRIBUTIONS)} and never installs over another distribution '
            '(same import name): uninstall it yourself or use a separate environment')
    if requested is None:
        if mmcv_dists:
            return mmcv_dists[0]
        stacks = [MMCV_FOR_MMENGINE[d] for d in mmengine_dists if d in MMCV_FOR_MMENGINE]
        return stacks[0] if len(stacks) == 1 else 'mmcv'
    if mmcv_dists and mmcv_dists[0] != requested:
        installed = mmcv_dists[0]
        raise InstallError(
            f'{installed} already provides the mmcv module in this environment; installing '
            f'{requested} would overwrite its files (same import name). Build {installed} '
            f'(--dist {installed}) or install {requested} in a separate environment')
    return requested


def wheel_prefix(dist: str) -> str:
    """How a wheel or sdist file name of ``dist`` starts (``onedl-mmcv`` -> ``onedl_mmcv-``)."""
    return dist.replace('-', '_') + '-'


def cache_dir(mmcv_version: str, dist: str = 'mmcv') -> Path:
    torch_version, cuda_version, with_cuda = torch_info()
    flavour = f'cu{cuda_version.replace(".", "")}' if with_cuda else 'cpu'
    py = f'py{sys.version_info.major}{sys.version_info.minor}'
    root = Path(os.environ.get('CONVNEXT_DENSE_CACHE',
                               Path.home() / '.cache' / 'convnext_dense')) / 'wheels'
    return root / f'{dist}-{mmcv_version}_torch-{torch_version}_{flavour}_{py}'


def verify(mmcv_version: str, quiet: bool = False, dist: str = 'mmcv') -> bool:
    """Check in a fresh interpreter that mmcv (from ``dist``) imports and its ops run."""
    _, _, with_cuda = torch_info()
    code = VERIFY_SNIPPET.format(version=mmcv_version, cuda=with_cuda, dist=dist)
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if result.returncode == 0:
        log(result.stdout.strip())
        return True
    if not quiet:
        log('verification failed:\n' + (result.stderr or result.stdout).strip()[-2000:])
    return False


def patch_cxx_standard(src_dir: Path) -> None:
    """Rewrite mmcv's hard-coded C++14/17 flags to C++20 for torch >= 2.10 headers."""
    setup_py = src_dir / 'setup.py'
    text = setup_py.read_text()
    patched = re.sub(r'-std=c\+\+1[47]', '-std=c++20', text)
    if patched != text:
        setup_py.write_text(patched)
        log('patched setup.py: -std=c++14/17 -> -std=c++20')


def cflags_without_debug_info() -> str:
    """The C/C++ flags for the build: Python's own (or ``$CFLAGS``) with ``-g0`` last.

    Python's flags have ``-g``: debug info for every torch header a source file includes
    makes the CPU build 1.75x slower (mmcv 2.1.0 on 2 cores: 12.6 min with it, 7.2 without)
    and the wheel 23x bigger (32 MB against 1.4 MB). ``$CFLAGS`` replaces Python's flags in
    setuptools, so they are passed on whole (``-O3``, ``-DNDEBUG`` ...), not ``-g0`` alone.
    """
    base = os.environ.get('CFLAGS', sysconfig.get_config_var('CFLAGS') or '')
    return f'{base} -g0'.strip()


def is_sdist_of(path: Path, dist: str, version: str) -> bool:
    """Whether ``path`` is named as the sdist of ``dist`` ``version`` (either spelling)."""
    name = path.name.replace('-', '_')
    return name.startswith(wheel_prefix(dist).replace('-', '_') + version + '.tar')


def build_wheel(mmcv_version: str, out_dir: Path, sdist: Path | None = None,
                dist: str = 'mmcv') -> Path:
    """Build a wheel into out_dir from the sdist of ``dist`` (``sdist``, or downloaded),
    patched if needed."""
    _, _, with_cuda = torch_info()
    with tempfile.TemporaryDirectory(prefix='mmcv-build-') as tmp:
        tmp_path = Path(tmp)
        if sdist is None:
            run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
                 '--no-build-isolation', '-d', str(tmp_path / 'sdist'),
                 f'{dist}=={mmcv_version}'])
            sdists = [p for p in (tmp_path / 'sdist').iterdir()
                      if is_sdist_of(p, dist, mmcv_version)]
            if not sdists:
                raise InstallError(f'pip download produced no {dist} sdist in '
                                   f'{tmp_path / "sdist"}')
            sdist = sdists[0]
        elif not is_sdist_of(sdist, dist, mmcv_version):
            raise InstallError(f'--sdist {sdist} is not the source distribution of {dist} '
                               f'{mmcv_version} (expected {wheel_prefix(dist)}{mmcv_version}'
                               '.tar.gz)')
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp_path / 'src', filter='data')
        src_dir = next((tmp_path / 'src').iterdir())
        if torch_needs_cxx20():
            patch_cxx_standard(src_dir)
        env = dict(os.environ, MMCV_WITH_OPS='1', CFLAGS=cflags_without_debug_info(),
                   MAX_JOBS=os.environ.get('MAX_JOBS', str(os.cpu_count() or 2)))
        if with_cuda:
            env['FORCE_CUDA'] = '1'
        log(f'building {dist} {mmcv_version} with {"CUDA" if with_cuda else "CPU"} ops '
            f'(MAX_JOBS={env["MAX_JOBS"]}); this takes several minutes')
        wheel_tmp = tmp_path / 'wheel'
        run([sys.executable, '-m', 'pip', 'wheel', '--no-build-isolation', '--no-deps',
             '-w', str(wheel_tmp), str(src_dir)], env=env)
        wheels = list(wheel_tmp.glob(f'{wheel_prefix(dist)}*.whl'))
        if not wheels:
            raise InstallError(f'the {dist} build produced no wheel in {wheel_tmp}')
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheels[0].name
        partial = target.with_suffix('.partial')
        shutil.copyfile(wheels[0], partial)
        os.replace(partial, target)  # the cache never holds a half-written wheel
        return target


def install(mmcv_version: str | None = None, force_build: bool = False,
            sdist: Path | None = None, dist: str | None = None) -> None:
    """Make ``dist`` ``mmcv_version`` (defaults: see the module docstring) work here."""
    log_ops_choice()
    dist = choose_distribution(dist, module_distributions('mmcv'),
                               module_distributions('mmengine'))
    mmcv_version = mmcv_version or DISTRIBUTIONS[dist]
    log(f'mmcv distribution: {dist} {mmcv_version}')
    if not force_build and verify(mmcv_version, quiet=True, dist=dist):
        log('already installed, nothing to do')
        return
    wheel_dir = cache_dir(mmcv_version, dist)
    wheels = sorted(wheel_dir.glob(f'{wheel_prefix(dist)}*.whl'))
    if wheels and not force_build:
        log(f'using cached wheel {wheels[0]}')
        wheel = wheels[0]
    else:
        wheel = build_wheel(mmcv_version, wheel_dir, sdist, dist)
        log(f'cached wheel {wheel}')
    # --force-reinstall replaces only the same distribution (another one was refused above)
    run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--force-reinstall', str(wheel)])
    # mmcv's own runtime requirements, without letting pip touch torch. opencv: onedl-mmcv
    # declares it itself; upstream mmcv leaves it to mmengine, which onedl-mmengine does not
    # require (without it the fork's `import mmcv` fails: no module named cv2).
    run([sys.executable, '-m', 'pip', 'install', *RUNTIME_REQUIREMENTS])
    if not verify(mmcv_version, dist=dist):
        raise InstallError(f'{dist} {mmcv_version} was installed from {wheel} but its ops do '
                           'not work; delete that wheel and run with --force-build')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dist', choices=list(DISTRIBUTIONS),
                        help='the distribution providing mmcv (default: the installed one, '
                             'else the one of the installed mmengine\'s stack, else mmcv)')
    parser.add_argument('--version', help='its version (default: '
                        + ', '.join(f'{d} {v}' for d, v in DISTRIBUTIONS.items()) + ')')
    parser.add_argument('--force-build', action='store_true',
                        help='rebuild even if a cached wheel or a working install exists')
    parser.add_argument('--sdist', type=Path,
                        help='build from this sdist (mmcv-VERSION.tar.gz or '
                             'onedl_mmcv-VERSION.tar.gz) instead of downloading it (machines '
                             'without a package index)')
    args = parser.parse_args()
    if args.sdist is not None and not args.sdist.is_file():
        parser.error(f'--sdist {args.sdist}: no such file')
    try:
        install(args.version, args.force_build, args.sdist, args.dist)
    except InstallError as exc:
        log(f'ERROR: {exc}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
