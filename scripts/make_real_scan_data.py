"""Regenerate tests/data/real_scans/: small derived copies of real CT and MR volumes from Debian packages.

    mkdir -p /tmp/real && cd /tmp/real && apt-get download invesalius-examples mricron-data
    for d in *.deb; do dpkg-deb -x $d x; done
    python scripts/make_real_scan_data.py /tmp/real/x

Each volume is smoothed and resampled (linear) to 4 mm voxels (a whole head in ~50^3; the macaque brain: 1.5 mm)
and stored as int16 (CT: in HU, as the package holds it; MR: its values as the package holds them, rounded), so that
the folder stays under 300 KB. Sources and licences: tests/data/real_scans/README.md.
"""
import os
import sys
import tarfile
import tempfile
import plistlib

import numpy as np
import SimpleITK as sitk

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "data", "real_scans")
SPACING = 4.0


def resampled(image: sitk.Image, spacing: float = SPACING) -> sitk.Image:
    size = [max(8, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32),
                                             [spacing / 2.0] * image.GetDimension())
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def invesalius_ct(root: str) -> sitk.Image:
    """InVesalius' example project Cranium.inv3 (a tar.gz): main.plist + matrix.dat (int16 HU, shape z, y, x)."""
    inv3 = os.path.join(root, "usr/share/doc/invesalius-examples/examples/Cranium.inv3")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(inv3) as tar:
        tar.extractall(tmp)
        [folder] = os.listdir(tmp)
        with open(os.path.join(tmp, folder, "main.plist"), "rb") as f:
            meta = plistlib.load(f)
        m = meta["matrix"]
        data = np.fromfile(os.path.join(tmp, folder, m["filename"]), dtype=m["dtype"])
        # InVesalius' matrix.dat is a numpy memmap with one extra row/column/slice of zeros in front
        shape = [n + 1 for n in m["shape"]] if data.size != np.prod(m["shape"]) else m["shape"]
        data = data.reshape(shape)[-m["shape"][0]:, -m["shape"][1]:, -m["shape"][2]:]
    image = sitk.GetImageFromArray(data.astype(np.int16))
    image.SetSpacing([float(s) for s in meta["spacing"]])
    return image


def main(root: str):
    os.makedirs(OUT, exist_ok=True)
    ct = resampled(invesalius_ct(root))
    sitk.WriteImage(sitk.Cast(sitk.Clamp(ct, sitk.sitkFloat32, -1024, 3071), sitk.sitkInt16),
                    os.path.join(OUT, "head_ct_invesalius.nii.gz"), useCompression=True)
    templates = os.path.join(root, "usr/share/mricron/templates")
    for name, out, spacing in (("ch2.nii.gz", "head_mr_t1_colin27.nii.gz", SPACING),
                               ("inia19-t1-brain.nii.gz", "brain_mr_t1_inia19_macaque.nii.gz", 1.5)):
        mr = resampled(sitk.ReadImage(os.path.join(templates, name)), spacing)
        sitk.WriteImage(sitk.Cast(sitk.Clamp(mr, sitk.sitkFloat32, 0, 32767), sitk.sitkInt16),
                        os.path.join(OUT, out), useCompression=True)
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/real/x")
