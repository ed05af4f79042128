"""What a ``basicsr train`` / ``basicsr test`` run adds to BasicSR, all applied by :func:`compat.apply` on
``import dvmsr_mma`` (when basicsr is installed):

- :mod:`.compat`: the fixes basicsr 1.4.2 needs on current torch, torchvision and numpy, and the hooks below;
- :mod:`.checks` and :mod:`.option_schema`: the pre-flight checks and the typed option schema (one line per bad
  option, file or tensor shape, before anything is built);
- :mod:`.resume` (exact resume after a kill), :mod:`.stop_signals` (state on SIGTERM/SIGINT), :mod:`.nan_guard`,
  :mod:`.train_step` (the mixed-precision step), :mod:`.bad_images` (images that do not decode).

May import ``utils``, ``archs``, ``ops``, ``data`` and ``tools`` (weights, sizes); ``models`` import from here,
never the other way, and nothing here imports ``cli``.
"""
