"""Per-modality dataset fingerprint: nnU-Net's fingerprint plus, for every modality, statistics of its cases only.

`CINFingerprintExtractor` runs nnU-Net's per-case analysis (`DatasetFingerprintExtractor.analyze_case`: read, crop
to nonzero, sample foreground intensities) once per case, exactly as nnU-Net does, and derives from the same
per-case results both nnU-Net's dataset-wide fingerprint (unchanged keys, so nnU-Net's planners and plain
`nnUNetv2_plan_experiment` still read it) and one extra key:

    fingerprint["cin"] = {
        "rules": {dataset.json modality keys},
        "modalities": [...],                                      conditioning order
        "case_modality": {case: modality},
        "foreground_intensity_properties_per_modality": {modality: {"0": {mean, median, std, min, max,
                                                                          percentile_99_5, percentile_00_5}, ...}},
        "per_modality": {modality: {num_cases, median_spacing, min_spacing, max_spacing, median_shape_after_crop,
                                    min_shape_after_crop, max_shape_after_crop, median_relative_size_after_cropping}},
        "signature_version": 1,
        "case_features": {case: {feature: value}},                  whole-image features (planning/signature.py)
    }

Intensity statistics are computed from the foreground samples of that modality's cases only (nnU-Net's sampling,
same number of samples per case). Spacing and shape statistics remain dataset-wide for planning (as in nnU-Net);
the per-modality ones are recorded for the user. The case features of the modality signatures are computed on the
whole image as nnU-Net's per-case analysis reads it (before cropping), in the same worker: the image is read once.

nnU-Net draws 10e7 foreground intensity samples in total, evenly over the cases. The environment variable
nnUNet_cin_fingerprint_samples sets another total (e.g. 1e6 for quick runs on tiny data); unset, nnU-Net's is used.

Cost: the per-case work is nnU-Net's and is done once. The pooled-sample statistics are computed on a single array
whose cases are grouped by modality, so that every modality is a contiguous view (one copy, where nnU-Net makes
two); dataset-wide mean/std/min/max are combined from the per-modality ones, and percentiles are exact order
statistics found by counting and selecting within a narrow bracket (`percentiles`) instead of np.percentile's copy
and full partition. Together, the per-modality and dataset-wide statistics cost less than nnU-Net's dataset-wide
ones alone. The case features sort at most 65536 voxels per case: a fraction of a percent of reading the image
(benchmarks/bench_fingerprint.py).
"""
import multiprocessing
import os
from time import sleep
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p, save_json
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed
from tqdm import tqdm

from nnunet_cin.modalities import CheckedRules, ModalityError, ModalityRules
from nnunet_cin.planning.signature import VERSION as SIGNATURE_VERSION
from nnunet_cin.planning.signature import case_features

PERCENTILES = np.array((0.5, 50.0, 99.5))
# total number of foreground intensity samples (spread evenly over the cases); unset: nnU-Net's 10e7
SAMPLES_ENV = "nnUNet_cin_fingerprint_samples"


def _order_statistics(x: np.ndarray, ranks: Sequence[int]) -> Dict[int, float]:
    """Exact values of the given 0-based ranks of x (as if sorted), without sorting or partitioning all of x.

    A strided subsample (nnU-Net's samples are random draws, so it is representative) brackets each rank with two
    values; counting the elements below the bracket and selecting within it gives the exact order statistic. A
    bracket that misses (not expected: 6-sigma margins) falls back to a full partition. x is not modified."""
    ranks = sorted(set(int(r) for r in ranks))
    n = x.size
    if n <= 2_000_000:
        part = np.partition(x, ranks)
        return {r: float(part[r]) for r in ranks}
    step = max(1, n // 100_000)
    sub = np.sort(x[::step])
    m = sub.size
    out = {}
    for r in ranks:
        if r in out:
            continue
        group = [g for g in ranks if r <= g <= r + 1]  # a rank and its interpolation neighbour share a bracket
        p = r / (n - 1)
        margin = 6 * np.sqrt(m * p * (1 - p)) + 3
        i_lo, i_hi = int(np.floor(p * (m - 1) - margin)), int(np.ceil(p * (m - 1) + margin)) + 1
        lo = sub[i_lo] if i_lo >= 0 else None
        hi = sub[i_hi] if i_hi < m else None
        below = int(np.count_nonzero(x < lo)) if lo is not None else 0
        if lo is None and hi is None:
            band = x
        elif lo is None:
            band = x[x <= hi]
        elif hi is None:
            band = x[x >= lo]
        else:
            band = x[(x >= lo) & (x <= hi)]
        k = [g - below for g in group]
        if min(k) < 0 or max(k) >= band.size:
            part = np.partition(x, ranks)
            return {g: float(part[g]) for g in ranks}
        part = np.partition(band, k)
        out.update({g: float(part[j]) for g, j in zip(group, k)})
    return out


def percentiles(x: np.ndarray, q=PERCENTILES) -> List[float]:
    """np.percentile(x, q) (linear interpolation, numpy's default method), via exact order statistics."""
    n = x.size
    pos = np.asarray(q, dtype=np.float64) / 100 * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    vals = _order_statistics(x, list(lo) + list(hi))
    return [vals[a] + (vals[b] - vals[a]) * (t - a) for a, b, t in zip(lo, hi, pos)]


def intensity_stats(samples: np.ndarray) -> dict:
    """nnU-Net's foreground intensity statistics of a 1d sample array (x is not modified); equal to nnU-Net's
    np.percentile/np.mean/np.std on the same values up to float rounding."""
    p00_5, median, p99_5 = percentiles(samples)
    return {'mean': float(np.mean(samples)), 'median': float(median), 'std': float(np.std(samples)),
            'min': float(np.min(samples)), 'max': float(np.max(samples)),
            'percentile_99_5': float(p99_5), 'percentile_00_5': float(p00_5)}


def _combine_moments(parts: Sequence[dict], counts: Sequence[int]) -> dict:
    """Dataset-wide mean/std/min/max from per-part ones (parallel-variance formula, float64)."""
    n = float(sum(counts))
    mean = sum(c * p['mean'] for p, c in zip(parts, counts)) / n
    var = sum(c * (p['std'] ** 2 + (p['mean'] - mean) ** 2) for p, c in zip(parts, counts)) / n
    return {'mean': float(mean), 'std': float(np.sqrt(max(var, 0.0))),
            'min': float(min(p['min'] for p in parts)), 'max': float(max(p['max'] for p in parts))}


def _geometry_stats(spacings: List, shapes: List, rel_sizes: List) -> dict:
    sp, sh = np.array(spacings, dtype=float), np.array(shapes, dtype=float)
    return {'num_cases': len(spacings),
            'median_spacing': np.median(sp, 0).tolist(), 'min_spacing': sp.min(0).tolist(),
            'max_spacing': sp.max(0).tolist(),
            'median_shape_after_crop': np.median(sh, 0).tolist(), 'min_shape_after_crop': sh.min(0).astype(int).tolist(),
            'max_shape_after_crop': sh.max(0).astype(int).tolist(),
            'median_relative_size_after_cropping': float(np.median(rel_sizes))}


class CINFingerprint:
    """The owner of fingerprint["cin"] (see the module docstring): CINFingerprintExtractor writes it with `entry_for`,
    everything else reads it through this class. Like CINPlans (nnunet_cin.plans) for plans["cin"]."""
    KEY = "cin"

    def __init__(self, fingerprint: dict):
        self.entry: dict = fingerprint.get(self.KEY) or {}

    @staticmethod
    def entry_for(rules: ModalityRules, case_modality: Dict[str, str], intensity_properties: Dict[str, dict],
                  per_modality: Dict[str, dict], case_features: Dict[str, dict]) -> dict:
        return {"rules": rules.to_dict(), "modalities": list(rules.modalities), "case_modality": dict(case_modality),
                "foreground_intensity_properties_per_modality": intensity_properties, "per_modality": per_modality,
                "signature_version": SIGNATURE_VERSION, "case_features": case_features}

    def is_current(self, rules: ModalityRules, case_modality: Dict[str, str]) -> bool:
        """Whether it is our per-modality part, made with these rules for these cases, with the case features of
        this version of the modality signatures."""
        cin = self.entry
        return (bool(cin) and cin.get('rules') == rules.to_dict() and cin.get('case_modality') == case_modality
                and cin.get('signature_version') == SIGNATURE_VERSION
                and set(cin.get('case_features') or ()) == set(case_modality))

    @property
    def case_modality(self) -> Dict[str, str]:
        return dict(self.entry.get("case_modality") or {})

    @property
    def per_modality(self) -> Dict[str, dict]:
        """{modality: geometry statistics of its cases} (num_cases, spacings, shapes, relative size after crop)."""
        return self.entry["per_modality"]

    @property
    def intensity_properties(self) -> Dict[str, dict]:
        """{modality: {channel: foreground intensity statistics of its cases}}."""
        return self.entry["foreground_intensity_properties_per_modality"]

    def case_features_of(self, modality: str) -> List[dict]:
        """The whole-image features of the modality's training cases (nnunet_cin.planning.signature)."""
        return [self.entry["case_features"][c] for c, m in self.case_modality.items() if m == modality]


def fingerprint_is_current(fingerprint: dict, rules: ModalityRules, case_modality: Dict[str, str]) -> bool:
    return CINFingerprint(fingerprint).is_current(rules, case_modality)


class _ReaderRecordingFeatures:
    """Stands in for nnU-Net's reader class in `DatasetFingerprintExtractor.analyze_case` (which instantiates it and
    reads the case's images and segmentation): reads with the real reader and keeps the case features of the image
    it read, so that nnU-Net's per-case analysis runs unchanged and the image is not read a second time."""

    def __init__(self, reader_writer_class):
        self._reader = reader_writer_class()
        self.features = None

    def __call__(self):  # analyze_case calls reader_writer_class() to get its reader
        return self

    def read_images(self, image_files, *args, **kwargs):
        images, properties = self._reader.read_images(image_files, *args, **kwargs)
        self.features = case_features(images, properties['spacing'])
        return images, properties

    def __getattr__(self, name):  # read_seg and anything else: the real reader's
        return getattr(self._reader, name)


def analyze_case(image_files: List[str], segmentation_file: str, reader_writer_class, num_samples: int) -> tuple:
    """nnU-Net's per-case analysis (shape after crop, spacing, foreground samples, their statistics, relative size
    after crop), plus the case features of the image as read."""
    reader = _ReaderRecordingFeatures(reader_writer_class)
    result = DatasetFingerprintExtractor.analyze_case(image_files, segmentation_file, reader, num_samples)
    return (*result, reader.features)


class CINFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's DatasetFingerprintExtractor plus per-modality statistics (see module docstring)."""

    def __init__(self, dataset_name_or_id: Union[str, int], num_processes: int = 8, verbose: bool = False,
                 checked: Optional[CheckedRules] = None):
        """`checked`: the dataset's rules checked against its training cases, when the caller has them (the
        planning command); otherwise they are checked here."""
        super().__init__(dataset_name_or_id, num_processes, verbose)
        if os.environ.get(SAMPLES_ENV):
            # nnU-Net samples 1e8 foreground voxels in total (memory/time cap); this lets small runs sample fewer
            self.num_foreground_voxels_for_intensitystats = float(os.environ[SAMPLES_ENV])
        if checked is None:
            checked = CheckedRules.of(self.dataset_json, self.dataset.keys(), join(self.input_folder, 'dataset.json'))
        self.rules, self.case_modality = checked.rules, checked.case_modality

    # nnU-Net's run() with the pool loop copied (DatasetFingerprintExtractor.run has no hook between the per-case
    # analysis and the statistics; its results are not kept). The only changes: the per-case function is nnU-Net's
    # own wrapped by `analyze_case` (which adds the case features), and a worker error is raised as soon as it occurs.
    def _analyze_cases(self) -> List[tuple]:
        reader_writer_class = determine_reader_writer_from_dataset_json(
            self.dataset_json, self.dataset[next(iter(self.dataset.keys()))]['images'][0])
        num_foreground_samples_per_case = int(self.num_foreground_voxels_for_intensitystats // len(self.dataset))
        r = []
        with multiprocessing.get_context("spawn").Pool(self.num_processes) as p:
            for k in self.dataset.keys():
                r.append(p.starmap_async(analyze_case,
                                         ((self.dataset[k]['images'], self.dataset[k]['label'], reader_writer_class,
                                           num_foreground_samples_per_case),)))
            remaining = list(range(len(self.dataset)))
            workers = [j for j in p._pool]
            with tqdm(desc="Extracting dataset fingerprint (per modality)", total=len(self.dataset),
                      disable=not getattr(self, 'show_progress_bar', True)) as pbar:
                while len(remaining) > 0:
                    if not all(j.is_alive() for j in workers):
                        raise RuntimeError('A fingerprint worker died (look for an error message above; without one, '
                                           'running out of RAM is likely: reduce -np)')
                    done = [i for i in remaining if r[i].ready()]
                    for i in done:
                        r[i].get()  # raise worker errors now
                        pbar.update()
                    remaining = [i for i in remaining if i not in done]
                    sleep(0.1)
            return [i.get()[0] for i in r]

    def compute_fingerprint(self, results: List[tuple]) -> dict:
        """nnU-Net's fingerprint plus fingerprint["cin"] from the per-case results (in self.dataset order)."""
        keys = list(self.dataset.keys())
        num_channels = len(self.dataset_json['channel_names'].keys() if 'channel_names' in self.dataset_json
                           else self.dataset_json['modality'].keys())
        modalities = self.rules.modalities
        by_mod = {m: [i for i, k in enumerate(keys) if self.case_modality[k] == m] for m in modalities}

        ds_stats = {}
        mod_stats = {m: {} for m in modalities}
        for c in range(num_channels):
            # one array, cases grouped by modality: each modality is a contiguous view
            pieces, bounds, start = [], {}, 0
            for m in modalities:
                n_m = 0
                for i in by_mod[m]:
                    s = np.asarray(results[i][2][c])
                    pieces.append(s)
                    n_m += len(s)
                bounds[m] = (start, start + n_m)
                start += n_m
            samples = np.concatenate(pieces)
            del pieces
            if samples.size == 0:
                raise RuntimeError(f'no foreground voxels in any training case for channel {c}: nnU-Net needs '
                                   f'labelled foreground to compute intensity statistics')
            counts, parts = [], []
            for m in modalities:
                a, b = bounds[m]
                if b == a:
                    raise ModalityError(f'modality "{m}": none of its cases ({", ".join(keys[i] for i in by_mod[m])}) '
                                        f'has foreground voxels in channel {c}; its intensity statistics cannot be '
                                        f'computed. Check the labels of these cases.')
                mod_stats[m][str(c)] = intensity_stats(samples[a:b])
                counts.append(b - a)
                parts.append(mod_stats[m][str(c)])
            pct = percentiles(samples)
            ds_stats[c] = {'mean': 0.0, 'median': float(pct[1]), 'std': 0.0, 'min': 0.0, 'max': 0.0,
                           'percentile_99_5': float(pct[2]), 'percentile_00_5': float(pct[0])}
            ds_stats[c].update(_combine_moments(parts, counts))
            del samples

        shapes_after_crop = [r[0] for r in results]
        spacings = [r[1] for r in results]
        rel_sizes = [r[4] for r in results]
        fingerprint = {
            "spacings": spacings,
            "shapes_after_crop": shapes_after_crop,
            'foreground_intensity_properties_per_channel': ds_stats,
            "median_relative_size_after_cropping": np.median(rel_sizes, 0),
            CINFingerprint.KEY: CINFingerprint.entry_for(
                self.rules, self.case_modality, mod_stats,
                {m: _geometry_stats([spacings[i] for i in by_mod[m]], [shapes_after_crop[i] for i in by_mod[m]],
                                    [rel_sizes[i] for i in by_mod[m]]) for m in modalities},
                {k: results[i][5] for i, k in enumerate(keys)}),
        }
        return fingerprint

    def run(self, overwrite_existing: bool = False) -> dict:
        preprocessed_output_folder = join(nnUNet_preprocessed, self.dataset_name)
        properties_file = join(preprocessed_output_folder, 'dataset_fingerprint.json')
        if isfile(properties_file) and not overwrite_existing:
            fingerprint = load_json(properties_file)
            if fingerprint_is_current(fingerprint, self.rules, self.case_modality):
                return fingerprint
            print('The existing dataset_fingerprint.json has no per-modality statistics and modality signature '
                  'features for the current modality rules and cases: extracting it again.')
        fingerprint = self.compute_fingerprint(self._analyze_cases())
        maybe_mkdir_p(preprocessed_output_folder)
        try:
            save_json(fingerprint, properties_file)
        except Exception:
            if isfile(properties_file):
                os.remove(properties_file)
            raise
        return load_json(properties_file)  # JSON form (string channel keys), as nnU-Net's planner reads it
