"""What users run besides training, none of it needing basicsr: :mod:`.infer` (upscaling image files, tiles),
:mod:`.export` (ONNX), :mod:`.lam` (Local Attribution Maps), :mod:`.bench` (parameters, FLOPs, time, memory),
:mod:`.spandrel` and :mod:`.comfyui` (chaiNNer and ComfyUI), and what they share: :mod:`.detect` (the network a
checkpoint holds), :mod:`.weights` (reading checkpoints) and :mod:`.image_io`.

May import ``utils``, ``archs`` and ``ops``; never ``training``, ``models`` or ``cli``.
"""
