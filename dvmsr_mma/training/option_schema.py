"""The typed schema of a BasicSR option file, validated with pydantic before BasicSR reads a key.

BasicSR 1.4.2 reads its options with ``opt['key']`` wherever it needs one, so a wrong type or a missing mapping
surfaces as a ``TypeError`` deep in its code, and an unknown key (``use_hfip``) is silently ignored. Here one
declaration says which keys exist and what they hold: the top level, ``datasets.<phase>`` per dataset type,
``network_*`` (from the constructor signature of the registered arch), ``path``, ``train`` (the optimizer and
scheduler built on a dummy parameter exactly as BasicSR builds them, losses from their constructors), ``val`` and
its metrics, ``logger``, ``dist_params`` and this package's keys. The first problem is one
:class:`~dvmsr_mma.utils.errors.OptionError` line with the option path, what was found and what to write (an error that
is
also the exception BasicSR documents for the same input, e.g. ``KeyError`` for an unregistered name); each unknown
key is one warning line with the closest known name (``unknown_options: error`` makes it an error).

pydantic (v2) rather than msgspec: its models are built at run time from constructor signatures
(``create_model``), validators see a context (the machine's cores, the run's ``num_gpu``), and every error carries
its location, which is the option path. What a schema cannot say (files exist, HR/LR pairing, weights fit) is in
:mod:`dvmsr_mma.training.checks`.
"""
import ast
import builtins
import difflib
import functools
import inspect
import json
import os
import re
import sys
import textwrap
from typing import Any, Callable, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Tuple, Type

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import Annotated

from dvmsr_mma.training.nan_guard import NAN_POLICIES
from dvmsr_mma.training.train_step import AMP_CHOICES
from dvmsr_mma.utils.checkpoint_io import CHECKPOINT_FORMATS
from dvmsr_mma.utils.errors import OptionError, RegistryKeyError, option_error_as
from dvmsr_mma.utils.signatures import network_arguments_problem, signature_parameters

WORKERS_PER_CORE = 2  # DataLoader worker processes allowed per CPU core (they mostly wait on decoding and I/O)
MAX_PREFETCH_QUEUE = 64
UNKNOWN_OPTIONS = ('warn', 'error')
STRICT = os.environ.get('DVMSR_MMA_STRICT_OPTIONS', '') not in ('', '0')  # unknown keys are errors
NUMBER_PATTERN = re.compile(r'[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?')
_warned: set = set()


# ---------------------------------------------------------------------------------------------------- leaves
def show(value: Any) -> str:
    """A value as the option file would write it, short."""
    if value is None:
        return '~'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _fail(text: str, documented: str = '') -> PydanticCustomError:
    return PydanticCustomError('option', '{text}', {'text': text, 'documented': documented})


def not_a_number(value: Any, key: str, example: str, whole: bool) -> str:
    """Why ``value`` is not a number, for the option named ``key`` (without the path): PyYAML 1.1 reads ``2e-4``
    as text unless it has a dot and a signed exponent; a quoted number is text."""
    text = value.strip() if isinstance(value, str) else ''
    if NUMBER_PATTERN.fullmatch(text):
        number = float(text.replace('_', ''))
        if 'e' in text.lower():
            mantissa, exponent = re.split('[eE]', text)
            mantissa += '' if '.' in mantissa else '.0'
            as_float = f'{mantissa}e{exponent if exponent[0] in "+-" else "+" + exponent}'
            fix = str(int(number)) if whole and number.is_integer() else f'{as_float} or !!float {text}'
            return (f'{value!r} is text, not a number (PyYAML reads a number with an exponent as text unless it '
                    f'has a dot and a signed exponent); write {fix}')
        if number.is_integer() or not whole:
            return f'{value!r} is quoted, so it is text; write it without quotes: {key}: {text}'
    return f'{show(value)} is not {"a whole number" if whole else "a number"}' + (
        f'; write e.g. {example}' if example else '')


def _key(example: str) -> str:
    return example.split(':', 1)[0]


def _whole_check(least: Optional[int] = None, example: str = '', float_ok: bool = False,
                 most: Optional[int] = None, none_ok: bool = True) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and none_ok:
            return value
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not (is_int or float_ok and isinstance(value, float) and value.is_integer()):
            raise _fail(not_a_number(value, _key(example), example, whole=True))
        if least is not None and value < least:
            raise _fail(f'{show(value)} is less than {least}' + (f'; write e.g. {example}' if example else ''))
        if most is not None and value > most:
            raise _fail(f'{show(value)} is more than {most}' + (f'; write e.g. {example}' if example else ''))
        return value
    return check


def whole(least: Optional[int] = None, example: str = '', float_ok: bool = False, most: Optional[int] = None,
          none_ok: bool = True) -> Any:
    """An integer option (``float_ok``: also a whole float, as BasicSR's files write ``!!float 5e3``)."""
    return Annotated[Optional[int], PlainValidator(_whole_check(least, example, float_ok, most, none_ok))]


def number(least: Optional[float] = None, most: Optional[float] = None, example: str = '',
           none_ok: bool = True) -> Any:
    """A real option (an int is a real)."""
    def check(value: Any) -> Any:
        if value is None and none_ok:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(not_a_number(value, _key(example), example, whole=False))
        if least is not None and value < least or most is not None and value > most:
            span = f'from {least} to {most}' if least is not None and most is not None else (
                f'at least {least}' if least is not None else f'at most {most}')
            raise _fail(f'{show(value)} is out of range: it must be {span}' + (
                f'; write e.g. {example}' if example else ''))
        return value
    return Annotated[Optional[float], PlainValidator(check)]


def text(example: str = '', none_ok: bool = True) -> Any:
    def check(value: Any) -> Any:
        if value is None and none_ok or isinstance(value, str):
            return value
        raise _fail(f'{show(value)} is not text' + (f'; write e.g. {example}' if example else ''))
    return Annotated[Optional[str], PlainValidator(check)]


def path_text(example: str) -> Any:
    """A file or folder path (existence is :mod:`dvmsr_mma.training.checks`' business)."""
    def check(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        raise _fail(f'{show(value)} is not a path; write e.g. {example}')
    return Annotated[Optional[str], PlainValidator(check)]


def flag(example: str = '', none_ok: bool = True) -> Any:
    def check(value: Any) -> Any:
        if value is None and none_ok or isinstance(value, bool):
            return value
        raise _fail(f'{show(value)} is not true or false' + (f'; write e.g. {example}' if example else ''))
    return Annotated[Optional[bool], PlainValidator(check)]


def choice(choices: Tuple[Any, ...], documented: str = '') -> Any:
    """One of ``choices`` (None: ``~``; ``false`` is off as well where ``~`` is a choice)."""
    def check(value: Any) -> Any:
        try:
            if value in choices or value is False and None in choices:
                return value
        except TypeError:  # an unhashable list or mapping
            pass
        names = ', '.join('~' if c is None else str(c) for c in choices)
        raise _fail(f'{show(value)} is not one of {names}', documented)
    return Annotated[Any, PlainValidator(check)]


def numbers(example: str, whole_numbers: bool = False, least: Optional[float] = None) -> Any:
    """A list of numbers; an item's error names its index."""
    item = whole(least, '', float_ok=True, none_ok=False) if whole_numbers else number(least)
    return Annotated[Optional[List[item]], Field(json_schema_extra={'example': example})]


def registered(registry: str, example: str, none_ok: bool = True) -> Any:
    """A name registered in BasicSR's ``<registry>`` registry (read when validating: plugins register late)."""
    def check(value: Any) -> Any:
        import basicsr.utils.registry as registries
        if value is None and none_ok:
            return value
        if not isinstance(value, str):
            raise _fail(f'{show(value)} is not text; write e.g. {example}')
        reg = getattr(registries, f'{registry.upper()}_REGISTRY')
        try:
            reg.get(value)
        except KeyError as err:  # RegistryKeyError: names the registry and the closest names
            raise _fail(str(err).replace('type: ', '', 1), 'KeyError') from None
        return value
    return Annotated[Optional[str], PlainValidator(check)]


def num_gpu() -> Any:
    def check(value: Any) -> Any:
        if value == 'auto':
            return value
        return _whole_check(0, 'num_gpu: auto', none_ok=False)(value)  # BasicSR: ~ is not 0, so CUDA
    return Annotated[Any, PlainValidator(check)]


def template(example: str) -> Any:
    def check(value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str) or '{}' not in value:
            raise _fail(f'{show(value)} is not a name template with {{}} for the HR name; write e.g. {example}')
        return value
    return Annotated[Optional[str], PlainValidator(check)]


def mapping(example: str) -> Any:
    """A mapping whose content a later stage validates (per ``type``)."""
    return Annotated[Optional[Dict[Any, Any]], Field(json_schema_extra={'example': example})]


def probabilities(count: int, names: str, example: str) -> Any:
    """``count`` probabilities that sum to 1 (``random.choices`` weights for ``names``)."""
    def check(value: Any) -> Any:
        if not (isinstance(value, list) and len(value) == count and all(_real(v) and 0 <= v <= 1 for v in value)
                and abs(sum(value) - 1) < 1e-6):
            raise _fail(f'{show(value)} is not {count} probabilities ({names}) summing to 1; write e.g. {example}')
        return value
    return Annotated[Any, PlainValidator(check)]


def pair(fits: Callable[[float, float], bool], what: str, example: str) -> Any:
    """A ``[low, high]`` range of two numbers that ``fits``."""
    def check(value: Any) -> Any:
        if not (isinstance(value, list) and len(value) == 2 and all(_real(v) for v in value) and fits(*value)):
            raise _fail(f'{show(value)} is not {what}; write e.g. {example}')
        return value
    return Annotated[Any, PlainValidator(check)]


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


ANY = Annotated[Any, Field(default=None)]


# ---------------------------------------------------------------------------------------------------- sections
class Section(BaseModel):
    """A mapping of options: the fields are the known keys, ``PATTERNS`` (regex -> leaf) more known keys, other
    keys are kept and reported as unknown unless ``OPEN`` (a type whose keys are not all known here)."""

    model_config = ConfigDict(extra='allow', strict=True, arbitrary_types_allowed=True)
    OPEN: ClassVar[bool] = False
    PATTERNS: ClassVar[Tuple[Tuple[str, Any], ...]] = ()


class IOBackend(Section):
    type: choice(('disk', 'lmdb', 'memcached'), 'ValueError') = None
    db_paths: ANY
    client_keys: ANY
    server_list_cfg: ANY
    client_cfg: ANY
    sys_path: ANY


class Dataset(Section):
    """What BasicSR's data loader and this package read from every dataset; the keys of other dataset types are
    not known here (``OPEN``)."""

    OPEN = True
    name: text('name: DF2K') = None
    type: registered('dataset', 'type: PairedImageDataset') = None
    phase: text() = None
    scale: whole(1, 'scale: 4') = None
    dataroot_gt: path_text('dataroot_gt: datasets/DF2K/DF2K_HR_sub') = None
    dataroot_lq: path_text('dataroot_lq: datasets/DF2K/DF2K_LR_bicubic_X4_sub') = None
    meta_info_file: path_text('meta_info_file: datasets/meta_info.txt') = None
    io_backend: Optional[IOBackend] = None
    gt_size: whole(1, 'gt_size: 128') = None
    use_hflip: flag('use_hflip: true') = None
    use_rot: flag('use_rot: true') = None
    use_shuffle: flag('use_shuffle: true') = None
    num_worker_per_gpu: whole(0, 'num_worker_per_gpu: 4') = None
    batch_size_per_gpu: whole(1, 'batch_size_per_gpu: 16') = None
    dataset_enlarge_ratio: whole(1, 'dataset_enlarge_ratio: 1') = None
    prefetch_mode: choice((None, 'cpu', 'cuda')) = None
    num_prefetch_queue: whole(1, 'num_prefetch_queue: 2', most=MAX_PREFETCH_QUEUE) = None
    pin_memory: flag('pin_memory: true') = None
    persistent_workers: flag('persistent_workers: false') = None
    mean: numbers('mean: [0.5, 0.5, 0.5]') = None
    std: numbers('std: [0.5, 0.5, 0.5]') = None
    color: choice((None, 'y')) = None
    max_bad_share: number(0, 1, 'max_bad_share: 0.01') = None  # dvmsr_mma.training.bad_images


class PairedImageDataset(Dataset):
    OPEN = False
    filename_tmpl: template("filename_tmpl: '{}x4'") = None


class SingleImageDataset(Dataset):
    OPEN = False


class ImageNetPretrainDataset(Dataset):
    OPEN = False
    quantize_lq: flag('quantize_lq: true') = None


class ImageNetPairedDataset(Dataset):
    OPEN = False


KERNELS = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')


def kernels(example: str) -> Any:
    """Blur kernel types ``random_mixed_kernels`` draws from."""
    def check(value: Any) -> Any:
        if not (isinstance(value, list) and value and all(isinstance(v, str) and v in KERNELS for v in value)):
            raise _fail(f'{show(value)} is not a list of kernel types from {", ".join(KERNELS)}; write e.g. {example}')
        return value
    return Annotated[Any, PlainValidator(check)]


def _kernel_probs(example: str) -> Any:
    def check(value: Any) -> Any:
        if not (isinstance(value, list) and value and all(_real(v) and v >= 0 for v in value)
                and abs(sum(value) - 1) < 1e-6):
            raise _fail(f'{show(value)} is not probabilities summing to 1, one per kernel type; write e.g. {example}')
        return value
    return Annotated[Any, PlainValidator(check)]


def _sigmas(key: str, example: str) -> Any:
    return pair(lambda low, high: 0 < low < high, f'a range [low, high] with 0 < low < high ({key})', example)


_KERNEL_LIST = "['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']"
_KERNEL_PROB = '[0.45, 0.25, 0.12, 0.03, 0.12, 0.03]'
REAL_ESRGAN_EXAMPLES = {  # key -> how to write it (Real-ESRGAN's x4plus values); "not set" lines show them
    'meta_info': 'meta_info: datasets/DF2K/meta_info/meta_info_DF2Kmultiscale+OST_sub.txt',
    'use_hflip': 'use_hflip: true', 'use_rot': 'use_rot: false', 'final_sinc_prob': 'final_sinc_prob: 0.8',
    **{key: value for n, sigma in (('', '[0.2, 3]'), ('2', '[0.2, 1.5]')) for key, value in (
        (f'blur_kernel_size{n}', f'blur_kernel_size{n}: 21'), (f'kernel_list{n}', f'kernel_list{n}: {_KERNEL_LIST}'),
        (f'kernel_prob{n}', f'kernel_prob{n}: {_KERNEL_PROB}'), (f'blur_sigma{n}', f'blur_sigma{n}: {sigma}'),
        (f'betag_range{n}', f'betag_range{n}: [0.5, 4]'), (f'betap_range{n}', f'betap_range{n}: [1, 2]'),
        (f'sinc_prob{n}', f'sinc_prob{n}: 0.1'))}}


class RealESRGANDataset(Dataset):
    """BasicSR's Real-ESRGAN dataset: HR images, with the blur and sinc kernels the Real-ESRGAN models degrade them
    with (keys ending in 2: the second degradation). Every key it reads is required, as it reads them with ``[]``
    (``tests/test_option_schema.py`` checks this class against the keys its code reads)."""

    OPEN = False
    meta_info: path_text(REAL_ESRGAN_EXAMPLES['meta_info']) = None  # disk backend (the checks: it exists)
    use_hflip: flag(REAL_ESRGAN_EXAMPLES['use_hflip'], none_ok=False)
    use_rot: flag(REAL_ESRGAN_EXAMPLES['use_rot'], none_ok=False)
    blur_kernel_size: whole(1, REAL_ESRGAN_EXAMPLES['blur_kernel_size'], none_ok=False)  # read, unused (7 to 21)
    kernel_list: kernels(REAL_ESRGAN_EXAMPLES['kernel_list'])
    kernel_prob: _kernel_probs(REAL_ESRGAN_EXAMPLES['kernel_prob'])
    blur_sigma: _sigmas('blur_sigma', REAL_ESRGAN_EXAMPLES['blur_sigma'])
    betag_range: _sigmas('betag_range', REAL_ESRGAN_EXAMPLES['betag_range'])
    betap_range: _sigmas('betap_range', REAL_ESRGAN_EXAMPLES['betap_range'])
    sinc_prob: number(0, 1, REAL_ESRGAN_EXAMPLES['sinc_prob'], none_ok=False)
    blur_kernel_size2: whole(1, REAL_ESRGAN_EXAMPLES['blur_kernel_size2'], none_ok=False)
    kernel_list2: kernels(REAL_ESRGAN_EXAMPLES['kernel_list2'])
    kernel_prob2: _kernel_probs(REAL_ESRGAN_EXAMPLES['kernel_prob2'])
    blur_sigma2: _sigmas('blur_sigma2', REAL_ESRGAN_EXAMPLES['blur_sigma2'])
    betag_range2: _sigmas('betag_range2', REAL_ESRGAN_EXAMPLES['betag_range2'])
    betap_range2: _sigmas('betap_range2', REAL_ESRGAN_EXAMPLES['betap_range2'])
    sinc_prob2: number(0, 1, REAL_ESRGAN_EXAMPLES['sinc_prob2'], none_ok=False)
    final_sinc_prob: number(0, 1, REAL_ESRGAN_EXAMPLES['final_sinc_prob'], none_ok=False)

    @model_validator(mode='after')
    def _listed_images(self) -> 'RealESRGANDataset':
        """It reads ``io_backend.type``, and on disk the image list ``meta_info``, with ``[]``."""
        backend = self.io_backend.type if self.io_backend is not None else None
        if backend is None:
            raise _fail('io_backend.type: not set; add it, e.g. io_backend: {type: disk} (or lmdb)')
        if backend != 'lmdb' and self.meta_info is None:
            raise _fail(f'meta_info: not set; on disk RealESRGANDataset reads its images from that list (one path per '
                        f'line, relative to dataroot_gt); add it, e.g. {REAL_ESRGAN_EXAMPLES["meta_info"]}')
        return self

    @model_validator(mode='after')
    def _one_probability_per_kernel(self) -> 'RealESRGANDataset':
        for n in ('', '2'):
            names, probs = getattr(self, f'kernel_list{n}'), getattr(self, f'kernel_prob{n}')
            if len(names) != len(probs):
                raise _fail(f'kernel_prob{n} has {len(probs)} probabilities but kernel_list{n} {len(names)} kernel '
                            f'types; give one probability per kernel type')
        return self


DATASETS: Dict[str, Type[Dataset]] = {cls.__name__: cls for cls in (
    PairedImageDataset, SingleImageDataset, ImageNetPretrainDataset, ImageNetPairedDataset, RealESRGANDataset)}


class Paths(Section):
    PATTERNS = ((r'pretrain_network_\w+', path_text('pretrain_network_g: experiments/pretrained_models/x.pth')),
                (r'strict_load_\w+', flag('strict_load_g: true')),
                (r'param_key_\w+', text('param_key_g: params_ema')))
    resume_state: path_text('resume_state: experiments/<name>/training_states/5000.state, or ~') = None
    ignore_resume_networks: Optional[List[text(none_ok=False)]] = None
    root: text() = None
    experiments_root: text() = None
    models: text() = None
    training_states: text() = None
    log: text() = None
    visualization: text() = None
    results_root: text() = None


class Train(Section):
    """``train``: SRModel's and the GAN models' keys of BasicSR 1.4.2, the NaN guard's and AMP's; the optimizers,
    the scheduler and the ``*_opt`` losses are validated per ``type`` afterwards."""

    PATTERNS = ((r'optim_\w+', mapping('optim_g: {type: Adam, lr: 2.0e-4}')),
                (r'\w+_opt', mapping('pixel_opt: {type: L1Loss, loss_weight: 1.0}')))
    ema_decay: number(0, 1, 'ema_decay: 0.999 (0 for none)', none_ok=False) = None  # BasicSR compares it with 0
    scheduler: mapping('scheduler: {type: MultiStepLR, milestones: [250000], gamma: 0.5}') = None
    total_iter: whole(1, 'total_iter: 500000', float_ok=True) = None
    warmup_iter: whole(-1, 'warmup_iter: -1', float_ok=True, none_ok=False) = None
    net_d_iters: whole(1, 'net_d_iters: 1', float_ok=True, none_ok=False) = None
    net_d_init_iters: whole(0, 'net_d_init_iters: 0', float_ok=True, none_ok=False) = None
    amp: choice(AMP_CHOICES) = None
    nan_policy: choice((*NAN_POLICIES, None)) = None
    nan_skip_limit: whole(1, 'nan_skip_limit: 10') = None
    # the keys other models read (StyleGAN2's r1_reg_weight, EDVR's tsa_iter, ...) are added per model_type from
    # the model's code: options_model


class Val(Section):
    val_freq: whole(1, 'val_freq: 5000', float_ok=True) = None
    save_img: flag('save_img: true') = None
    suffix: text('suffix: ~') = None
    metrics: Optional[Dict[str, mapping('psnr: {type: calculate_psnr, crop_border: 4, test_y_channel: true}')]] = None
    pbar: flag('pbar: true') = None
    amp: choice(AMP_CHOICES) = None
    center_frame_only: ANY
    flip_seq: ANY
    num_val_samples: ANY


class Wandb(Section):
    project: text('project: my_project') = None
    resume_id: text('resume_id: ~') = None
    entity: text() = None


class Logger(Section):
    print_freq: whole(1, 'print_freq: 100', float_ok=True) = None
    save_checkpoint_freq: whole(1, 'save_checkpoint_freq: 5000', float_ok=True) = None
    use_tb_logger: flag('use_tb_logger: true') = None
    wandb: Optional[Wandb] = None
    save_checkpoint_format: choice((*CHECKPOINT_FORMATS, None)) = None


class DistParams(Section):
    backend: text('backend: nccl') = None
    port: whole(1, 'port: 29500', most=65535) = None


class Options(Section):
    """The top level. ``is_train`` and the keys after it are set by BasicSR's ``parse_options``; the keys a model
    reads besides (Real-ESRGAN's degradations) are added per ``model_type`` (:func:`options_model`)."""

    PATTERNS = ((r'network_\w+', mapping('network_g: {type: DVMSR, upscale: 4}')),)
    name: text('name: DVMSR_x4', none_ok=False)
    model_type: registered('model', 'model_type: SRModel')
    scale: whole(1, 'scale: 4') = None
    num_gpu: num_gpu()
    manual_seed: whole(0, 'manual_seed: 10', most=2 ** 32 - 1 - 1024) = None
    datasets: Dict[Any, Annotated[Dict[Any, Any], Field(json_schema_extra={'example': 'train: {name: DF2K, ...}'})]]
    path: Paths
    train: Optional[Train] = None
    val: Optional[Val] = None
    logger: Optional[Logger] = None
    dist_params: Optional[DistParams] = None
    find_unused_parameters: flag('find_unused_parameters: false') = None
    unknown_options: choice(UNKNOWN_OPTIONS) = None
    is_train: ANY
    dist: ANY
    rank: ANY
    world_size: ANY
    auto_resume: ANY
    root_path: ANY


EXAMPLES = {  # option path (phase, metric -> *) -> how to write it, for "not set" and "not a mapping"
    'name': 'name: DVMSR_x4', 'model_type': 'model_type: SRModel', 'num_gpu': 'num_gpu: auto (or 0 for CPU)',
    'datasets': 'datasets: {train: {name: DF2K, type: PairedImageDataset, ...}}',
    'datasets.*': '<phase>: {name: DF2K, type: PairedImageDataset, ...} (or delete the entry)',
    'path': 'path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}',
    'train': 'train: {optim_g: {type: Adam, lr: 2.0e-4}, total_iter: 500000, ...}',
    'val': 'val: {val_freq: 5000, save_img: false, metrics: {...}} (or val: ~ for none)',
    'logger': 'logger: {print_freq: 100, save_checkpoint_freq: 5000, use_tb_logger: true}',
    'logger.wandb': 'wandb: {project: ~, resume_id: ~}', 'dist_params': 'dist_params: {backend: nccl, port: 29500}',
    'datasets.*.io_backend': 'io_backend: {type: disk} (or lmdb)',
    'path.ignore_resume_networks': "ignore_resume_networks: ['network_d']",
    'val.metrics': 'metrics: {psnr: {type: calculate_psnr, crop_border: 4}}',
    'val.metrics.*': 'psnr: {type: calculate_psnr, crop_border: 4, test_y_channel: true}',
    'train.optim_g': 'optim_g: {type: Adam, lr: 2.0e-4, betas: [0.9, 0.99]}',
    'train.scheduler': 'scheduler: {type: MultiStepLR, milestones: [250000], gamma: 0.5}',
    'train.pixel_opt': 'pixel_opt: {type: L1Loss, loss_weight: 1.0} (or ~ for none)',
    'network_g': 'network_g: {type: DVMSR, upscale: 4}', 'network_t': 'network_t: {type: DVMSR, embed_dim: 192}',
}
EXAMPLES.update({f'datasets.*.{key}': example for key, example in REAL_ESRGAN_EXAMPLES.items()})


# ---------------------------------------------------------------------------------------------------- per type
def _leaf_for_default(name: str, default: Any) -> Any:
    """The leaf a constructor argument takes, judged from its default (numbers: any real, as Python's would)."""
    if default is inspect.Parameter.empty or default is None:
        return ANY
    try:
        example = f'{name}: {json.dumps(list(default) if isinstance(default, tuple) else default)}'.replace('"', "'")
    except (TypeError, ValueError):  # a class or function as the default (act_layer=nn.GELU)
        return ANY
    if isinstance(default, bool):
        return flag(example)
    if isinstance(default, (int, float)):
        return number(example=example)
    if isinstance(default, str):
        return text(example)
    if isinstance(default, (list, tuple)):
        if default and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default):
            return numbers(example)
        return Annotated[Optional[List[Any]], Field(json_schema_extra={'example': example})]
    return ANY


OVERRIDES = {  # argument -> leaf, where the default says too little
    'reduction': choice(('none', 'mean', 'sum'), 'ValueError'),
    'gan_type': choice(('vanilla', 'lsgan', 'wgan', 'wgan_softplus', 'hinge'), 'NotImplementedError'),  # GANLoss
    'loss_weight': number(0, None, 'loss_weight: 1.0'),
    'crop_border': whole(0, 'crop_border: 4'),
    'input_order': choice(('HWC', 'CHW')),
    'milestones': numbers('milestones: [250000, 400000]', least=0),
    'periods': numbers('periods: [250000, 250000]', whole_numbers=True, least=1),
    'restarts': numbers('restarts: [0]', whole_numbers=True, least=0),
    'restart_weights': numbers('restart_weights: [1]'),
}


def _not_none(leaf: Any, owner: str, name: str, default: Any) -> Any:
    """``leaf`` refusing ``~``: an argument without a default, or whose default is not None, has nothing in its
    code for None (``loss_weight: ~`` ends in ``None * tensor``); an argument whose default is None takes it."""
    if default is inspect.Parameter.empty:
        fix = f'{name} has no default; write a value'
    else:
        fix = f'delete the line for its default ({name}: {show(default)}) or write a value'

    def check(value: Any) -> Any:
        if value is None:
            raise _fail(f'~ is not a value {owner} takes; {fix}')
        return value
    return Annotated[leaf, BeforeValidator(check)]


@functools.lru_cache(maxsize=None)
def arguments_model(owner: Callable, skip: Tuple[str, ...] = ()) -> Type[Section]:
    """A section whose fields are ``owner``'s constructor arguments (less ``skip``), typed from their defaults;
    ``~`` only where the default is None."""
    params, any_kwargs = signature_parameters(owner)
    title = getattr(owner, '__name__', 'the constructor')
    fields = {name: (_not_none(OVERRIDES.get(name, _leaf_for_default(name, p.default)), title, name, p.default)
                     if p.default is not None else ANY, None)
              for name, p in params.items() if name not in skip and name != 'type'}
    fields['type'] = (ANY, None)
    model = create_model(f'{getattr(owner, "__name__", "Owner")}Options', __base__=Section, **fields)
    model.OPEN = True  # unknown argument names are network_arguments_problem's, with the constructor's names
    return model


# ---------------------------------------------------------------------------------------------------- models' keys
class Reads(NamedTuple):
    """The option keys a model's code reads: key -> whether every read is ``[key]`` (none ``.get``), per level;
    ``defaults``: the constant default of a top-level ``.get(key, default)``."""

    top: Dict[str, bool]
    train: Dict[str, bool]
    defaults: Dict[str, Any]


def _holder(node: ast.AST) -> Optional[str]:
    """'top' for ``self.opt`` / ``opt``, 'train' for ``self.opt['train']`` / ``opt['train']`` / ``train_opt``."""
    if isinstance(node, ast.Attribute) and node.attr == 'opt' and isinstance(node.value, ast.Name) and \
            node.value.id == 'self' or isinstance(node, ast.Name) and node.id == 'opt':
        return 'top'
    if isinstance(node, ast.Name) and node.id == 'train_opt' or isinstance(node, ast.Subscript) and \
            _holder(node.value) == 'top' and _constant(node.slice) == 'train':
        return 'train'
    return None


def _constant(node: ast.AST) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


@functools.lru_cache(maxsize=None)
def model_reads(owner: type) -> Reads:
    """The top-level and ``train`` keys that the code of ``owner`` (a model, or a dataset: its ``opt``) and of its
    bases (BasicSR's and this package's) reads, from their source with ``ast``: the schema knows each key a model
    reads without a list to keep up to date."""
    reads = Reads({}, {}, {})
    for klass in owner.__mro__:
        if not klass.__module__.startswith(('basicsr.', 'dvmsr_mma.')):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source installed: its keys stay unknown
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Store):
                where, key, required, default = _holder(node.value), _constant(node.slice), True, None
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'get' \
                    and node.args:
                where, key, required = _holder(node.func.value), _constant(node.args[0]), False
                default = _constant(node.args[1]) if len(node.args) > 1 else None
            else:
                continue
            if where is None or not isinstance(key, str):
                continue
            level = getattr(reads, where)
            level[key] = level.get(key, True) and required
            if where == 'top' and default is not None:
                reads.defaults[key] = default
    return reads


DEGRADATIONS: Tuple[Tuple[str, str, Callable[[str], Any]], ...] = (
    # (key pattern, example value, example line -> leaf): the top-level keys BasicSR's Real-ESRGAN models read to
    # degrade the training images (which keys a model reads comes from its code: model_reads); stage-2 keys end in 2
    (r'resize_prob2?', '[0.2, 0.7, 0.1]', lambda ex: probabilities(3, 'up, down, keep', ex)),
    (r'resize_range2?', '[0.15, 1.5]', lambda ex: pair(
        lambda down, up: 0 < down <= 1 <= up, 'two scale factors [down, up] with 0 < down <= 1 <= up', ex)),
    (r'jpeg_range2?', '[30, 95]', lambda ex: pair(
        lambda low, high: 1 <= low <= high <= 100, 'two JPEG qualities [low, high] from 1 to 100', ex)),
    (r'noise_range2?', '[1, 30]', lambda ex: pair(
        lambda low, high: 0 <= low <= high, 'two Gaussian noise sigmas [low, high] (0-255), low <= high', ex)),
    (r'poisson_scale_range2?', '[0.05, 3]', lambda ex: pair(
        lambda low, high: 0 <= low <= high, 'two Poisson noise scales [low, high], low <= high', ex)),
    (r'\w+_prob2?', '0.5', lambda ex: number(0, 1, ex, none_ok=False)),
    (r'\w*gt_usm', 'true', lambda ex: flag(ex, none_ok=False)),
    (r'high_order_degradation', 'true', lambda ex: flag(ex, none_ok=False)),
    (r'gt_size', '256', lambda ex: whole(1, ex, none_ok=False)),
    (r'queue_size', '180', lambda ex: whole(1, ex, none_ok=False)),
)


def degradation_leaf(key: str) -> Optional[Tuple[Any, str]]:
    """The leaf and an example line of a Real-ESRGAN top-level key; None for another key."""
    for pattern, value, leaf in DEGRADATIONS:
        if re.fullmatch(pattern, key):
            return leaf(f'{key}: {value}'), f'{key}: {value}'
    return None


def _patterned(section: Type[Section], key: str) -> bool:
    return key in section.model_fields or any(re.fullmatch(pattern, key) for pattern, _ in section.PATTERNS)


def model_class(model_type: Any) -> Optional[type]:
    """The registered model named ``model_type``; None where there is none (the schema then says so)."""
    from basicsr.utils.registry import MODEL_REGISTRY

    if not isinstance(model_type, str):
        return None
    try:
        return MODEL_REGISTRY.get(model_type)
    except KeyError:
        return None


@functools.lru_cache(maxsize=None)
def options_model(model: Optional[type]) -> Type[Options]:
    """:class:`Options` plus the top-level and ``train`` keys ``model`` reads (:func:`model_reads`): Real-ESRGAN's
    degradations typed (:data:`DEGRADATIONS`), the others known."""
    if model is None:
        return Options
    reads = model_reads(model)
    train = create_model(f'{model.__name__}Train', __base__=Train,
                         **{key: (ANY, None) for key in reads.train if not _patterned(Train, key)})
    top = {key: ((degradation_leaf(key) or (ANY,))[0], None) for key in reads.top if not _patterned(Options, key)}
    return create_model(f'{model.__name__}Options', __base__=Options, train=(Optional[train], None), **top)


def _first_definer(model: type, method: str) -> Optional[type]:
    """The first of BasicSR's classes in ``model``'s bases that defines ``method`` (this package's models extend
    BasicSR's)."""
    return next((klass for klass in model.__mro__ if klass.__module__.startswith('basicsr.')
                 and method in vars(klass)), None)


def _model_rules(opt: Mapping[str, Any], model: Optional[type]) -> None:
    """What a training file needs across keys for its model, which BasicSR finds only once it builds or trains it:
    a loss for SRModel's step, a discriminator for the GAN models, Real-ESRGAN's degradations, a training-pair queue
    of whole batches, a GT patch that fits the scale and USM sharpening."""
    from basicsr.models.realesrgan_model import RealESRGANModel
    from basicsr.models.sr_model import SRModel
    from basicsr.models.srgan_model import SRGANModel
    from basicsr.models.video_recurrent_gan_model import VideoRecurrentGANModel

    train = opt.get('train')
    if model is None or not isinstance(train, Mapping) or opt.get('is_train') is False:
        return
    name, init = model.__name__, _first_definer(model, 'init_training_settings')
    if init is SRModel and not (train.get('pixel_opt') or train.get('perceptual_opt')):
        raise OptionError(f'train.pixel_opt: not set, nor train.perceptual_opt; {name} trains with at least one of '
                          'them; add e.g. pixel_opt: {type: L1Loss, loss_weight: 1.0}')
    if init in (SRGANModel, VideoRecurrentGANModel):
        for option, found, example in (
                ('network_d', opt.get('network_d'), 'network_d: {type: UNetDiscriminatorSN, num_in_ch: 3}'),
                ('train.optim_d', train.get('optim_d'), 'optim_d: {type: Adam, lr: 1.0e-4}'),
                ('train.gan_opt', train.get('gan_opt'), 'gan_opt: {type: GANLoss, gan_type: vanilla}')):
            if not found:
                raise OptionError(f'{option}: not set; {name} trains a discriminator and needs it; add it, e.g. '
                                  f'{example}')
    reads = model_reads(model)
    if opt.get('high_order_degradation', True):
        for key, required in reads.top.items():
            typed = degradation_leaf(key)
            if required and typed and key not in opt:
                raise OptionError(f'{key}: not set; {name} reads it to make the training pairs; add it, e.g. '
                                  f'{typed[1]}')
    if 'queue_size' in reads.top:
        _check_queue(opt, name, reads.defaults.get('queue_size'))
    gt_size, scale = opt.get('gt_size'), opt.get('scale')
    if 'gt_size' in reads.top and isinstance(gt_size, int) and isinstance(scale, int) and scale > 0:
        least = 26 if issubclass(model, RealESRGANModel) else 1  # USMSharp's 51-pixel kernel pads 25 by reflection
        fit = max(least, gt_size) + (-max(least, gt_size)) % scale
        if gt_size % scale or gt_size < least:
            why = 'the LR patch is gt_size / scale pixels' if gt_size % scale else \
                f'{name} USM-sharpens the GT patch, which needs at least {least} pixels'
            raise OptionError(f'gt_size: {gt_size} does not fit: {why}; write gt_size: {fit}')
        dataset = (opt.get('datasets') or {}).get('train') or {}
        if dataset.get('type') == 'RealESRGANDataset' and gt_size > 400:
            raise OptionError(f'gt_size: {gt_size} is larger than the 400x400 images RealESRGANDataset crops or '
                              'pads every image to; write at most gt_size: 400')


def _check_queue(opt: Mapping[str, Any], name: str, default: Any) -> None:
    """The training-pair queue holds whole batches (BasicSR asserts it at the first iteration)."""
    queue = opt.get('queue_size', default)
    batch = ((opt.get('datasets') or {}).get('train') or {}).get('batch_size_per_gpu')
    if not (isinstance(queue, int) and isinstance(batch, int) and batch > 0):
        return
    gpus, per = opt.get('num_gpu'), 'datasets.train.batch_size_per_gpu'
    if isinstance(gpus, int) and gpus > 1 and not opt.get('dist'):  # DataParallel: one batch over all GPUs
        batch, per = batch * gpus, f'{per} x num_gpu {gpus}'
    if queue % batch:
        low, given = queue - queue % batch, '' if 'queue_size' in opt else ' (the default)'
        fix = f'{low} or {low + batch}' if low else str(batch)
        raise OptionError(f'queue_size: {queue}{given} is not a multiple of the batch size {batch} ({per}); '
                          f'{name}\'s training-pair queue holds whole batches; write queue_size: {fix}')


# ---------------------------------------------------------------------------------------------------- validation
def _normal(path: str) -> str:
    path = re.sub(r'^datasets\.[^.\[]+', 'datasets.*', path)
    return re.sub(r'^val\.metrics\.[^.\[]+', 'val.metrics.*', path)


def _where(prefix: str, loc: Tuple[Any, ...]) -> str:
    where = prefix
    for part in loc:
        where += f'[{part}]' if isinstance(part, int) else (f'.{part}' if where else str(part))
    return where


def _example(where: str, model: Type[BaseModel], loc: Tuple[Any, ...]) -> str:
    found = EXAMPLES.get(_normal(where))
    if found:
        return found
    cls: Any = model
    for part in loc:
        info = getattr(cls, 'model_fields', {}).get(part)
        if info is None:
            return ''
        extra = info.json_schema_extra or {}
        for meta in info.metadata:
            extra = getattr(meta, 'json_schema_extra', None) or extra
        if isinstance(extra, dict) and 'example' in extra and part == loc[-1]:
            return extra['example']
        cls = next((a for a in getattr(info.annotation, '__args__', (info.annotation,))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return ''


def _line(err: Mapping[str, Any], prefix: str, model: Type[BaseModel]) -> OptionError:
    where = _where(prefix, err['loc'])
    kind = err['type']
    if kind == 'option':
        documented = err['ctx'].get('documented')
        message = f'{where}: {err["ctx"]["text"]}'
        if documented == 'KeyError':
            return RegistryKeyError(message)
        return option_error_as(getattr(builtins, documented), message) if documented else OptionError(message)
    example = _example(where, model, tuple(err['loc']))
    fix = f'; write e.g. {example}' if example else ''
    if kind == 'missing':
        return OptionError(f'{where}: not set; add it' + (f', e.g. {example}' if example else ''))
    if kind in ('dict_type', 'model_type', 'model_attributes_type'):
        return OptionError(f'{where}: {show(err["input"])} is not a mapping of options{fix}')
    if kind == 'list_type':
        return OptionError(f'{where}: {show(err["input"])} is not a list{fix}')
    return OptionError(f'{where}: {show(err["input"])}: {err["msg"]}{fix}')


def _validate(model: Type[Section], data: Any, prefix: str, context: Dict[str, Any]) -> Section:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise _line(err.errors()[0], prefix, model) from None


def _unknown(section: Section, prefix: str, context: Dict[str, Any]) -> List[str]:
    """Warning lines for the keys of ``section`` that no field or pattern knows (typed: pattern keys validated)."""
    from pydantic import TypeAdapter

    lines = []
    known = list(type(section).model_fields)
    for key, value in (section.model_extra or {}).items():
        leaf = next((leaf for pattern, leaf in type(section).PATTERNS if re.fullmatch(pattern, str(key))), None)
        where = f'{prefix}.{key}' if prefix else str(key)
        if leaf is not None:
            try:
                TypeAdapter(leaf).validate_python(value, strict=True, context=context)
            except ValidationError as err:
                raise _line(err.errors()[0], where, Section) from None
            continue
        if type(section).OPEN:
            continue
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
        hint = f'; did you mean {close[0]}?' if close else f'; known keys: {", ".join(known[:12])}'
        lines.append(f'{where}: unknown option, BasicSR ignores it{hint}')
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Section):
            lines += _unknown(value, f'{prefix}.{name}' if prefix else name, context)
    return lines


def _optimizer(where: str, opt: Mapping[str, Any]) -> None:
    """``optim_*``: built on a dummy parameter with BasicSR's own ``get_optimizer``, so an unknown type, an
    unexpected argument and a value torch refuses (``lr: -1``) each are one line here."""
    import torch
    from basicsr.models.base_model import BaseModel as BasicSRModel

    kind = opt.get('type')
    if not isinstance(kind, str):
        raise OptionError(f'{where}.type: {show(kind)} is not text; write e.g. type: Adam')
    cls = getattr(torch.optim, kind, None)
    known = [name for name in ('Adam', 'AdamW', 'Adamax', 'SGD', 'ASGD', 'RMSprop', 'Rprop')
             if _builds(BasicSRModel, name)]
    if cls is None or kind not in known:
        close = difflib.get_close_matches(kind, known, n=1, cutoff=0.6)
        raise option_error_as(NotImplementedError, f'{where}.type: {kind!r} is not an optimizer BasicSR 1.4.2 '
                              f'builds; it builds {", ".join(known)}' + (f' (did you mean {close[0]}?)' if close
                                                                          else ''))
    args = {k: v for k, v in opt.items() if k != 'type'}
    for key in ('lr',):
        if key in args:
            _validate(create_model('Lr', __base__=Section, lr=(number(0, None, 'lr: 2.0e-4'), None)),
                      {'lr': args[key]}, where, {})
    _validate(arguments_model(cls, ('params',)), args, where, {})
    problem = network_arguments_problem(kind, cls, {'params': None, **args})
    if problem:
        raise OptionError(f'{where}: {problem}')
    try:
        BasicSRModel.get_optimizer(None, kind, [torch.zeros(1, requires_grad=True)], **args)
    except Exception as err:  # a probe: whatever the constructor raises (IndexError for betas: [0.9]) refuses them
        raise OptionError(f'{where}: torch.optim.{kind} refuses these options: {type(err).__name__}: '
                          f'{_first_line(err)}') from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else '(no message)'


def _builds(model: Any, name: str) -> bool:
    import torch
    try:
        model.get_optimizer(None, name, [torch.zeros(1, requires_grad=True)], 1e-3)
    except NotImplementedError:
        return False
    return True


SCHEDULERS = {'MultiStepLR': 'MultiStepRestartLR', 'MultiStepRestartLR': 'MultiStepRestartLR',
              'CosineAnnealingRestartLR': 'CosineAnnealingRestartLR'}  # BaseModel.setup_schedulers' names


def _scheduler(where: str, opt: Mapping[str, Any]) -> None:
    import torch
    from basicsr.models import lr_scheduler

    kind = opt.get('type')
    if not isinstance(kind, str) or kind not in SCHEDULERS:
        close = difflib.get_close_matches(str(kind), list(SCHEDULERS), n=1, cutoff=0.6)
        raise option_error_as(NotImplementedError, f'{where}.type: {show(kind)} is not a scheduler BasicSR 1.4.2 '
                              f'builds; it builds {", ".join(SCHEDULERS)}' + (f' (did you mean {close[0]}?)'
                                                                               if close else ''))
    cls = getattr(lr_scheduler, SCHEDULERS[kind])
    args = {k: v for k, v in opt.items() if k != 'type'}
    _validate(arguments_model(cls, ('optimizer',)), args, where, {})
    problem = network_arguments_problem(kind, cls, {'optimizer': None, **args})
    if problem:
        raise OptionError(f'{where}: {problem}')
    try:
        cls(torch.optim.Adam([torch.zeros(1, requires_grad=True)], 1e-3), **args)
    except Exception as err:  # a probe, as for the optimizer
        raise OptionError(f'{where}: {kind} refuses these options: {type(err).__name__}: {_first_line(err)}') from None


def _arguments(where: str, opt: Mapping[str, Any], registry: str, skip: Tuple[str, ...] = (),
               extra: Tuple[str, ...] = ()) -> None:
    """A mapping with a registered ``type`` whose other keys are arguments of that class or function."""
    import basicsr.utils.registry as registries

    example = 'type: L1Loss' if registry == 'loss' else 'type: calculate_psnr'
    _validate(create_model('Typed', __base__=Section, type=(registered(registry, example, none_ok=False), None)),
              {'type': opt.get('type')}, where, {})
    owner = getattr(registries, f'{registry.upper()}_REGISTRY').get(opt['type'])
    args = {k: v for k, v in opt.items() if k != 'type' and k not in extra}
    _validate(arguments_model(owner, skip), args, where, {})
    problem = network_arguments_problem(opt['type'], owner, {**dict.fromkeys(skip), **args})
    if problem:
        raise OptionError(f'{where}: {problem}')


DISTILL_KEYS = ('position', 'layers', 'layers_t', 'blocks', 'blocks_t', 'probe_size')


def validate_options(opt: Mapping[str, Any], context: Optional[Dict[str, Any]] = None) -> List[str]:
    """Validate an option mapping (as read from the file, or as ``parse_options`` returns it); raise the first
    problem as one :class:`OptionError` line; return the unknown-key warning lines (raised instead as one error
    with ``unknown_options: error``, ``basicsr check --strict`` or ``DVMSR_MMA_STRICT_OPTIONS=1``)."""
    if not isinstance(opt, Mapping):
        raise OptionError(f'the option file must be a mapping of options, got {show(opt)}')
    gpus = opt.get('num_gpu')
    context = {'cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1,
               'num_gpu': gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else 1, **(context or {})}
    sr_model = model_class(opt.get('model_type'))
    top = _validate(options_model(sr_model), opt, '', context)
    lines = _unknown(top, '', context)
    for phase, dataset in top.datasets.items():
        kind = dataset.get('type')
        model = DATASETS.get(kind, Dataset) if isinstance(kind, str) else Dataset
        section = _validate(model, dataset, f'datasets.{phase}', context)
        lines += _unknown(section, f'datasets.{phase}', context)
        _bound_workers(f'datasets.{phase}', opt['datasets'][phase], context)
    for key, network in opt.items():
        if str(key).startswith('network_') and network is not None:
            _network(str(key), network)
    train = opt.get('train') or {}
    for key, value in train.items():
        where = f'train.{key}'
        if value is None:
            continue
        if re.fullmatch(r'optim_\w+', str(key)):
            _optimizer(where, value)
        elif key == 'scheduler':
            _scheduler(where, value)
        elif re.fullmatch(r'\w+_opt', str(key)) and 'type' in value:
            _arguments(where, value, 'loss', extra=DISTILL_KEYS if key == 'distill_opt' else ())
        elif re.fullmatch(r'\w+_opt', str(key)) and value and key != 'distill_opt':  # distill_opt: L1Loss by default
            raise OptionError(f'{where}.type: not set; BasicSR builds the loss by its type: add it, e.g. type: L1Loss '
                              '(or set the whole entry to ~ for no such loss)')
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        if metric is not None:
            _arguments(f'val.metrics.{name}', metric, 'metric', skip=('img', 'img2'))
    _model_rules(opt, sr_model)
    if lines and (opt.get('unknown_options') == 'error' or STRICT):
        raise OptionError(lines[0] + (f' (and {len(lines) - 1} more unknown options)' if len(lines) > 1 else '') +
                          '; fix the key, or remove it (unknown_options: error makes unknown keys errors)')
    return lines


def _bound_workers(where: str, dataset: Dict[str, Any], context: Mapping[str, Any]) -> None:
    """At most :data:`WORKERS_PER_CORE` DataLoader processes per CPU core in all: more are lowered to that, with
    one line (an option file written for a large server still runs on a laptop, and ``10000000`` stalls nothing)."""
    cores, gpus = context['cores'], max(1, context['num_gpu'])
    most = max(1, WORKERS_PER_CORE * cores // gpus)
    value = dataset.get('num_worker_per_gpu')
    if isinstance(value, int) and value > most:
        per_gpu = f' per GPU ({gpus} GPUs)' if gpus > 1 else ''
        warn([f'{where}.num_worker_per_gpu: {value} is more worker processes than this machine runs well; using '
              f'{most}{per_gpu} ({WORKERS_PER_CORE} per CPU core, {cores} cores)'])
        dataset['num_worker_per_gpu'] = most


def _network(key: str, network: Any) -> None:
    """``network_*``: a registered type; argument names as the constructor takes them; values of the types its
    defaults have."""
    from basicsr.utils.registry import ARCH_REGISTRY

    _validate(create_model('Network', __base__=Section, type=(registered('arch', 'type: DVMSR'), None)),
              network, key, {})
    if 'type' not in network:
        if key != 'network_g':  # "network_g.type: not set" is the pre-flight's (it says what to write)
            example = 'UNetDiscriminatorSN' if key == 'network_d' else 'DVMSR'
            raise OptionError(f'{key}.type: not set; BasicSR builds the network by its type: add it, e.g. '
                              f'type: {example}')
        return
    cls = ARCH_REGISTRY.get(network['type'])
    kwargs = {k: v for k, v in network.items() if k != 'type'}
    problem = network_arguments_problem(network['type'], cls, kwargs)
    if problem:
        raise OptionError(f'{key}: {problem}')
    _validate(arguments_model(cls), kwargs, key, {})


def warn(lines: List[str]) -> None:
    """Print each warning line once per process (``parse_options`` may validate the same file twice)."""
    for line in lines:
        if line not in _warned:
            _warned.add(line)
            print(f'warning: {line}', file=sys.stderr)


# What the pre-flight checks and DistillationModel both say when the teacher is missing (the checks before
# anything is built, the model when it is built directly).
NO_TEACHER = ('path.pretrain_network_t is not set: DistillationModel needs the trained teacher weights, '
              'e.g. experiments/<teacher run>/models/net_g_latest.pth')
