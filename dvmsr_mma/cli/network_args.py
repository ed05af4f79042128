"""The network arguments ``basicsr infer``, ``export``, ``lam`` and ``bench`` share: ``-opt FILE | --arch TYPE``,
``--weights FILE``, ``--scale S``. A DVMSR or MMA checkpoint describes itself, so ``--weights`` alone is enough:
the arch, scale and every size come from its tensor shapes (:mod:`dvmsr_mma.tools.detect`)."""
import argparse
import os
from typing import Optional

WEIGHTS_HELP = ('.pth (BasicSR params_ema/params) or .safetensors; a DVMSR or MMA checkpoint needs no --arch (its '
                'shapes tell the network); overrides the option file\'s pretrain_network_g')


def add_network_arguments(parser: argparse.ArgumentParser, onnx: bool = False) -> None:
    """-opt / --arch (/ --onnx) as one mutually exclusive group, --weights, --scale."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument('-opt', metavar='FILE', help='BasicSR option file (network_g, scale, path.pretrain_network_g)')
    src.add_argument('--arch', metavar='TYPE', help='ARCH_REGISTRY name; with --weights of a DVMSR or MMA '
                     'checkpoint it is optional (and must agree), else built with its default arguments')
    if onnx:
        src.add_argument('--onnx', metavar='FILE', help='a model written by basicsr export (onnxruntime, CPU); a '
                         'fixed-size one is fed tiles of its size')
    parser.add_argument('--weights', metavar='FILE', help=WEIGHTS_HELP)
    parser.add_argument('--scale', type=int, help='upscale factor (passed as the network\'s upscale; with a '
                        'self-describing checkpoint it must agree)')


def network_source(args: argparse.Namespace, weights_needed: bool = True) -> Optional[str]:
    """What :func:`dvmsr_mma.tools.infer.load_network` builds from: the option file, the registry name, or None (the
    weights alone). One line, before anything is built, when there is nothing to build from, or (with
    ``weights_needed``) when the network would run with random weights."""
    from dvmsr_mma.utils.errors import OptionError
    if not (args.opt or args.arch or args.weights or getattr(args, 'onnx', None)):
        raise OptionError('give --weights FILE (a DVMSR or MMA checkpoint: the network is read from its shapes), '
                          '-opt FILE or --arch TYPE --weights FILE')
    if weights_needed:
        require_weights(args.opt, args.arch, args.weights)
    return args.opt or args.arch


def require_weights(opt: Optional[str], arch: Optional[str], weights: Optional[str]) -> None:
    """One line, before anything is built, when the network would run with random weights."""
    import yaml

    from dvmsr_mma.utils.errors import OptionError
    if arch and not weights:
        raise OptionError('--arch needs --weights FILE')
    if opt and not weights and os.path.isfile(opt):
        with open(opt, encoding='utf-8') as f:
            opt_dict = yaml.safe_load(f)
        if not isinstance(opt_dict, dict) or not (opt_dict.get('path') or {}).get('pretrain_network_g'):
            raise OptionError(f'-opt: {opt} sets no path.pretrain_network_g; pass --weights FILE')
