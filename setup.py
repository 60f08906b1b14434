from setuptools import find_packages, setup

setup(
    name="nnunet-cin",
    version="0.1.0",
    description="Cross-modality nnU-Net: one model for CT and MRI via conditional instance normalization",
    python_requires=">=3.10",
    # trainers/ lives at the top of the repository (nnU-Net's nnUNet_extTrainer points at a folder), but is
    # installed inside the package so that a non-editable install carries it too.
    packages=find_packages(include=["nnunet_cin", "nnunet_cin.*"]) + ["nnunet_cin.trainers"],
    package_dir={"nnunet_cin": "nnunet_cin", "nnunet_cin.trainers": "trainers"},
    install_requires=[
        "nnunetv2==2.8.1",  # the version nnunet_cin/nnunet_copies.py records the copied originals of
        "torch==2.14.1",
        "torchvision==0.29.1",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={
        "console_scripts": [  # nnunet_cin.commands: each command's module imported without dependencies' noise
            "nnunet-cin=nnunet_cin.commands:nnunet_cin",
            "nnUNetv2_plan_and_preprocess_cin=nnunet_cin.commands:plan_and_preprocess",
            "nnUNetv2_predict_cin=nnunet_cin.commands:predict",
            "nnUNetv2_predict_cin_from_modelfolder=nnunet_cin.commands:predict_from_modelfolder",
            "nnUNetv2_evaluate_cin=nnunet_cin.commands:evaluate",
            "nnUNetv2_convert_mmwhs=nnunet_cin.commands:convert_mmwhs",
        ]
    },
)
