"""dvmsr_mma: Vision-Mamba super-resolution (DVMSR, MMA) as a BasicSR plugin."""
import re

from setuptools import find_packages, setup

# one version, dvmsr_mma.__version__, matching CHANGELOG.md (read as text: importing the package imports torch)
VERSION = re.search(r"^__version__ = '([^']+)'", open('dvmsr_mma/__init__.py', encoding='utf-8').read(), re.M).group(1)

setup(
    name='dvmsr_mma',
    version=VERSION,
    description='DVMSR and MMA Vision-Mamba super-resolution networks and distillation for BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['dvmsr_mma', 'dvmsr_mma.*', 'datasets_prep', 'datasets_prep.*']),
    py_modules=['dvmsr_mma_cli'],  # the console script: answers --help without importing the package (torch)
    package_data={'dvmsr_mma': ['demo/*.yml']},
    # What inference needs (basicsr infer --weights, dvmsr_mma.spandrel in ComfyUI / chaiNNer): no basicsr, which is
    # an sdist whose build pip runs in isolation (another torch) and which brings OpenCV, LMDB, scikit-image, ...
    install_requires=[
        'torch>=2.4',  # the oldest run (tests: README, Selective scan); torch 2.0 lacks torch.amp.GradScaler
        'numpy',
        'pyyaml',
        'tqdm',
        'safetensors',  # .safetensors checkpoints (logger.save_checkpoint_format, pretrain_network_*)
        'pydantic>=2',  # the option schema (dvmsr_mma/training/option_schema.py)
    ],
    extras_require={
        # Training, testing, the demo and dataset preparation: BasicSR's pipelines. Install torch first and this with
        # --no-build-isolation, so that basicsr builds against that torch (see the README).
        'train': [
            'basicsr==1.4.2',
            'torchvision',
            'einops',
            'lmdb',
            'scikit-image',  # the demo's images come from its bundled samples
        ],
        # Optional fast kernels; build only on a CUDA machine. Nothing imports them unconditionally. The ranges are
        # the releases whose selective_scan_fn / causal_conv1d_fn signatures the calls were checked against.
        'cuda': ['mamba-ssm>=1.1.1,<2.4', 'causal-conv1d>=1.1.0,<1.7'],
        # Optional CPU kernels compiled at run time (dvmsr_mma/ops/scan_cpu.py, conv_cpu.py), robust under load;
        # about 210 MB installed (numba 35 MB + llvmlite 173 MB). Without it the PyTorch path runs.
        'numba': ['numba>=0.58'],
        # ONNX export (basicsr export: torch.onnx's torch.export-based exporter needs onnxscript) and the
        # onnxruntime check / basicsr infer --onnx.
        'onnx': ['onnx', 'onnxruntime', 'onnxscript'],
        # ArchSupport entries for chaiNNer / ComfyUI's model loader (dvmsr_mma.tools.spandrel).
        'spandrel': ['spandrel'],
        # triton runs the Triton scan's tests in its interpreter; it comes with PyTorch's Linux x86-64 CUDA wheels.
        # hypothesis: the option files' property tests; pytest-xdist: make test runs two workers
        'test': ['pytest', 'pytest-timeout', 'pytest-xdist', 'ruff', 'hypothesis',
                 'triton; platform_system == "Linux" and platform_machine == "x86_64"'],
    },
    entry_points={'console_scripts': ['basicsr = dvmsr_mma_cli:main']},
    license='Apache-2.0',
)
