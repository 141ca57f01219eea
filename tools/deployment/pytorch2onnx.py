"""Export an FEC model to ONNX: ``python tools/deployment/pytorch2onnx.py CONFIG
[CHECKPOINT] --shape H W [--batch B] [--part {auto,backbone,neck,model}]
[--dynamic-batch] [--dynamic-shape] [--opset N] [--out F] [--verify]``.

The backbone alone (any config), backbone + neck of mmdet detectors, whole
mmseg / mmpretrain models. The work lives in ``fec_mm.deployment``.
"""
from fec_mm.deployment.pytorch2onnx import main

if __name__ == '__main__':
    main()
