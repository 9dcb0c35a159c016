"""measure_objects / summarize / write_table: areas, centroids and intensities against hand-built objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from napari_medseg.core.errors import GeometryMismatchError, MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.objects.measure import measure_objects, read_table, summarize, write_table

NAMES = ["background", "nucleus", "cell"]


def _two_objects():
    lab = np.zeros((60, 80), np.uint32)
    rr, cc = disk((20, 20), 8, shape=lab.shape)
    lab[rr, cc] = 1
    lab[40:50, 50:60] = 2  # 10 x 10 square
    return lab, np.array([0, 1, 2]), len(rr)


def test_2d_areas_centroids_units_and_classes():
    lab, cls, disk_px = _two_objects()
    df = measure_objects(lab, cls, pixel_size=0.5, class_names=NAMES)
    assert list(df["id"]) == [1, 2]
    assert list(df["class"]) == ["nucleus", "cell"]
    sq = df.set_index("id").loc[2]
    assert sq["area_um2"] == pytest.approx(100 * 0.25)
    assert sq["n_pixels"] == 100
    assert sq["centroid_y_px"] == pytest.approx(44.5) and sq["centroid_x_px"] == pytest.approx(54.5)
    assert sq["centroid_y_um"] == pytest.approx(44.5 * 0.5) and sq["centroid_x_um"] == pytest.approx(54.5 * 0.5)
    assert sq["perimeter_um"] > 0 and sq["solidity"] == pytest.approx(1.0)
    d = df.set_index("id").loc[1]
    assert d["area_um2"] == pytest.approx(disk_px * 0.25)
    assert d["major_axis_um"] == pytest.approx(d["minor_axis_um"], rel=0.05)  # a disc
    assert d["major_axis_um"] == pytest.approx(2 * 8 * 0.5, rel=0.1)
    assert d["eccentricity"] < 0.2


def test_anisotropic_pixels_and_mm_unit():
    lab, cls, _ = _two_objects()
    df = measure_objects(lab, cls, pixel_size=(0.002, 0.001), unit="mm")
    sq = df.set_index("id").loc[2]
    assert sq["area_mm2"] == pytest.approx(100 * 0.002 * 0.001)
    assert sq["centroid_y_mm"] == pytest.approx(44.5 * 0.002)
    assert np.isnan(sq["perimeter_mm"])  # needs square pixels


def test_crop_offset_shifts_centroids_only():
    lab, cls, _ = _two_objects()
    a = measure_objects(lab, cls, pixel_size=0.25)
    b = measure_objects(lab, cls, pixel_size=0.25, offset=(1000, 2000))
    assert np.allclose(b["centroid_y_px"] - a["centroid_y_px"], 1000)
    assert np.allclose(b["centroid_x_um"] - a["centroid_x_um"], 2000 * 0.25)
    assert np.allclose(a["area_um2"], b["area_um2"])


def test_intensity_means_per_channel_yxc_and_cyx():
    lab, cls, _ = _two_objects()
    img = np.zeros((60, 80, 3), np.uint8)
    img[..., 0][lab == 1] = 200
    img[..., 1][lab == 2] = 50
    img[..., 2] = 7
    df = measure_objects(lab, cls, image=img, pixel_size=1)
    assert list(df["mean_red"]) == [200, 0] and list(df["mean_green"]) == [0, 50] and list(df["mean_blue"]) == [7, 7]
    df2 = measure_objects(lab, cls, image=np.moveaxis(img, -1, 0)[:2], pixel_size=1, channel_names=["DAPI", "CD3 (AF488)"])
    assert list(df2["mean_dapi"]) == [200, 0] and list(df2["mean_cd3_af488"]) == [0, 50]
    with pytest.raises(GeometryMismatchError):
        measure_objects(lab, cls, image=np.zeros((10, 10)), pixel_size=1)


def test_image_source_pixel_size_and_box_read():
    lab, cls, _ = _two_objects()
    big = np.zeros((200, 300), np.float32)
    big[100:160, 150:230][lab == 1] = 9.0  # the labels are a crop at (100, 150) of the slide
    src = ImageSource(levels=[big], axes="YX", pixel_size=(0.5, 0.5), unit="micrometer")
    df = measure_objects(lab, cls, image=src, offset=(100, 150))
    assert list(df["mean_intensity"]) == [9.0, 0.0]
    assert df.loc[1, "area_um2"] == pytest.approx(25.0)
    assert df.loc[1, "centroid_y_px"] == pytest.approx(144.5)
    mm = measure_objects(lab, cls, image=src, offset=(100, 150), unit="mm")
    assert mm.loc[1, "area_mm2"] == pytest.approx(25e-6)


def test_labels_on_a_coarser_level():
    full = np.zeros((64, 64), np.float32)
    full[16:32, 16:32] = 5.0
    src = ImageSource(levels=[full, full[::2, ::2]], axes="YX", pixel_size=(1.0, 1.0), unit="micrometer")
    lab = np.zeros((32, 32), np.uint32)
    lab[8:16, 8:16] = 1
    df = measure_objects(lab, None, image=src, level=1)
    assert df.loc[0, "area_um2"] == pytest.approx(256.0)  # 8x8 coarse pixels of 2x2 um
    assert df.loc[0, "centroid_y_px"] == pytest.approx(23.5)  # the centre of level-0 rows 16..31
    assert df.loc[0, "mean_intensity"] == 5.0


def test_3d_volume_in_mm3_and_um3():
    lab = np.zeros((10, 20, 20), np.uint16)
    lab[2:6, 5:10, 5:12] = 1  # 4 x 5 x 7 = 140 voxels
    lab[8, 1, 1] = 2
    img = np.stack([lab * 3.0, lab * 1.0])
    df = measure_objects(lab, None, image=img, pixel_size=(2.0, 0.5, 0.5), unit="mm")
    one = df.set_index("id").loc[1]
    assert one["volume_mm3"] == pytest.approx(140 * 0.5)
    assert one["n_voxels"] == 140
    assert one["centroid_z_mm"] == pytest.approx(3.5 * 2.0)
    assert one["extent"] == pytest.approx(1.0) and one["solidity"] == pytest.approx(1.0)
    assert one["equivalent_diameter_mm"] == pytest.approx((6 * 70 / np.pi) ** (1 / 3))
    assert list(df["mean_ch0"]) == [3.0, 6.0] and list(df["mean_ch1"]) == [1.0, 2.0]
    um = measure_objects(lab, None, pixel_size=(2000.0, 500.0, 500.0), unit="um")
    assert um.loc[0, "volume_mm3"] == pytest.approx(70.0)
    assert um.loc[0, "volume_um3"] == pytest.approx(70.0e9)


def test_empty_labels_give_an_empty_table_with_columns():
    df = measure_objects(np.zeros((30, 30), np.uint32), None, image=np.ones((30, 30, 3)), pixel_size=1)
    assert len(df) == 0
    full = measure_objects(_two_objects()[0], None, image=np.ones((60, 80, 3)), pixel_size=1)
    assert list(df.columns) == list(full.columns)
    s = summarize(df, class_names=["nucleus"])
    assert list(s["count"]) == [0, 0]


def test_bad_inputs():
    with pytest.raises(MedsegError, match="2D"):
        measure_objects(np.zeros(5, np.uint8), None)
    with pytest.raises(MedsegError, match="integer"):
        measure_objects(np.zeros((5, 5)), None)
    with pytest.raises(MedsegError, match="classes"):
        measure_objects(np.full((5, 5), 3, np.uint8), [0, 1])
    with pytest.raises(MedsegError, match="unit"):
        measure_objects(np.ones((5, 5), np.uint8), None, pixel_size=1, unit="furlong")


def test_summary_counts_and_densities_whole_and_regions():
    lab, cls, _ = _two_objects()
    lab[5:8, 60:63] = 3
    cls = np.array([0, 1, 2, 1])
    df = measure_objects(lab, cls, pixel_size=10.0, class_names=NAMES)  # 60 x 80 px of 10 um: 0.48 mm^2
    s = summarize(df).set_index("class")
    assert s.loc["nucleus", "count"] == 2 and s.loc["cell", "count"] == 1 and s.loc["all", "count"] == 3
    assert s.loc["all", "area_mm2"] == pytest.approx(0.48)
    assert s.loc["nucleus", "density_per_mm2"] == pytest.approx(2 / 0.48)
    regions = np.zeros(lab.shape, np.int32)
    regions[:, :40] = 1  # left half holds the disc only
    regions[:, 40:] = 2
    r = summarize(df, regions=regions, region_names=["left", "right"]).set_index(["region", "class"])
    assert r.loc[("left", "nucleus"), "count"] == 1 and r.loc[("left", "cell"), "count"] == 0
    assert r.loc[("right", "all"), "count"] == 2
    assert r.loc[("left", "all"), "area_mm2"] == pytest.approx(60 * 40 * 1e-4)
    # polygons in level-0 (x, y) pixels: a box around the square only
    p = summarize(df, regions={"box": [(45, 35), (65, 35), (65, 55), (45, 55)]}).set_index("class")
    assert p.loc["cell", "count"] == 1 and p.loc["all", "count"] == 1
    assert p.loc["all", "area_mm2"] == pytest.approx(20 * 20 * 1e-4)
    with pytest.raises(GeometryMismatchError):
        summarize(df, regions=np.zeros((5, 5), np.int32))


def test_summary_3d_density_per_mm3():
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[1, 1, 1] = 1
    lab[2, 5:7, 5:7] = 2
    s = summarize(measure_objects(lab, None, pixel_size=1.0, unit="mm"))
    assert list(s.columns) == ["region", "class", "count", "volume_mm3", "density_per_mm3"]
    assert s.iloc[-1]["density_per_mm3"] == pytest.approx(2 / 400)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_write_read_table_roundtrip(tmp_path, suffix):
    lab, cls, _ = _two_objects()
    df = measure_objects(lab, cls, pixel_size=0.5, class_names=NAMES)
    p = write_table(df, tmp_path / f"t{suffix}")
    back = read_table(p)
    assert list(back.columns) == list(df.columns)
    assert np.allclose(back["area_um2"], df["area_um2"]) and list(back["class"]) == list(df["class"])


def test_table_errors(tmp_path):
    df = measure_objects(_two_objects()[0], None, pixel_size=1)
    with pytest.raises(MedsegError, match=r"\.csv"):
        write_table(df, tmp_path / "t.xlsx")
    with pytest.raises(MedsegError, match="does not exist"):
        write_table(df, tmp_path / "missing" / "t.csv")
    with pytest.raises(UnreadableInputError):
        read_table(tmp_path / "nothere.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UnreadableInputError):
        read_table(tmp_path / "bad.parquet")


@pytest.mark.parametrize("nd, spacing", [(2, (0.5, 0.5)), (2, (0.5, 0.8)), (3, (2.0, 0.5, 0.5))])
def test_vectorised_features_equal_scikit_image_regionprops(nd, spacing):
    """The moment-based columns come from one bincount pass, not regionprops: they must equal scikit-image's
    definitions (centroid, area, axes, eccentricity, orientation, equivalent diameter, channel means)."""
    from skimage.measure import label as cc
    from skimage.measure import regionprops_table

    rng = np.random.default_rng(nd)
    shape = (48, 64) if nd == 2 else (12, 40, 48)
    noise = ndi.gaussian_filter(rng.normal(size=shape), 2.5)
    lab = cc(noise > 0.05).astype(np.uint32)
    img = rng.integers(0, 255, shape + (2,)).astype(np.uint8)
    given = img if nd == 2 else np.moveaxis(img, -1, 0)  # YXC / CZYX
    t = measure_objects(lab, None, image=given, pixel_size=spacing, channel_names=["a", "b"])
    props = ["label", "area", "centroid", "intensity_mean"]
    props += ["eccentricity", "axis_major_length", "axis_minor_length", "orientation"] if nd == 2 else \
        ["equivalent_diameter_area"]
    ref = regionprops_table(lab, intensity_image=img.astype(float), properties=props, spacing=spacing)
    assert len(t) == len(ref["label"]) > 5
    np.testing.assert_array_equal(t["id"], ref["label"])
    unit_size = "area_um2" if nd == 2 else "volume_um3"
    np.testing.assert_allclose(t[unit_size], ref["area"], rtol=1e-9)
    for i, a in enumerate("yx" if nd == 2 else "zyx"):
        np.testing.assert_allclose(t[f"centroid_{a}_um"], ref[f"centroid-{i}"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(t["mean_a"], ref["intensity_mean-0"], rtol=1e-9)
    np.testing.assert_allclose(t["mean_b"], ref["intensity_mean-1"], rtol=1e-9)
    if nd == 2:
        np.testing.assert_allclose(t["eccentricity"], ref["eccentricity"], atol=1e-6)
        np.testing.assert_allclose(t["major_axis_um"], ref["axis_major_length"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(t["minor_axis_um"], ref["axis_minor_length"], rtol=1e-6, atol=1e-6)
        # orientation is defined modulo pi (+-pi/2 are the same axis)
        d = np.radians(t["orientation_deg"]) - ref["orientation"]
        np.testing.assert_allclose(np.sin(d), 0, atol=1e-6)
    else:
        np.testing.assert_allclose(t["equivalent_diameter_um"], ref["equivalent_diameter_area"], rtol=1e-9)
    basic = measure_objects(lab, None, image=given, pixel_size=spacing, channel_names=["a", "b"], shape="basic")
    assert basic["solidity"].isna().all()
    np.testing.assert_allclose(basic[unit_size], t[unit_size])
