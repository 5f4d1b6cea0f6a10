"""Listing, decoding, segmenting and preprocessing as pure functions (no Ray)."""
from __future__ import annotations

import json
import os

import av
import numpy as np
import pyarrow as pa
import pytest

import videos
from vadray.decode import GreyScaler, decode_frame_files, decode_segment
from vadray.errors import read_errors
from vadray.probe import InputError, frame_folder_timeline, probe
from vadray.exits import UsageError
from vadray.listing import list_videos
from vadray.preprocess import NormStats, PartialSums
from vadray.segments import pack_units, plan_segments
from vadray.stages import ProbeAndPlan, decode_planned
from vadray.synth import write_video
from vadray.volumes import gather, volume_starts


def test_listing_ids_extensions_and_frame_folders(tmp_path):
    write_video(str(tmp_path / "cam3" / "2024-05-01" / "0900.MP4"), videos.frames(10))
    write_video(str(tmp_path / "top.mkv"), videos.frames(10), codec="libx264")
    (tmp_path / "readme.txt").write_text("ignored")
    (tmp_path / "labels.csv").write_text("ignored")
    clip = tmp_path / "Train001"
    clip.mkdir()
    for i in (10, 2, 1):  # numbers too sparse to be frame counts: natural order 1, 2, 10
        (clip / f"{i:d}.tif").write_bytes(b"x")
    refs = list_videos(str(tmp_path))
    assert [r.video_id for r in refs] == ["Train001", "cam3/2024-05-01/0900", "top"]
    folder = refs[0]
    assert folder.is_frame_folder and [os.path.basename(u) for u in folder.frame_uris] == ["1.tif", "2.tif", "10.tif"]
    assert refs[1].size > 0 and refs[1].mtime and refs[1].uri.endswith("0900.MP4")
    single = list_videos(f"file://{tmp_path}/top.mkv")
    assert [r.video_id for r in single] == ["top"]
    # a frame re-rendered with the same byte size is a new input for resume (its mtime moved)
    os.utime(clip / "2.tif", (1_000_000_000, 1_000_000_000))
    assert list_videos(str(tmp_path))[0].identity() != folder.identity()


def test_colliding_names_keep_every_file(tmp_path):
    """`1.png` beside `001.png` is one frame number twice: both files stay frames, in name order;
    a frame folder `a.b/` keeps its name beside `a.b.mp4`, and its id is no file's former id."""
    from vadray.listing import former_ids

    folder = tmp_path / "twice"
    folder.mkdir()
    for name in ["1.png"] + [f"{n:03d}.png" for n in range(1, 11)]:
        (folder / name).write_bytes(b"x")
    [ref] = list_videos(str(folder))
    assert sorted(os.path.basename(u) for u in ref.frame_uris) == sorted(os.listdir(folder))
    assert "repeated" in ref.numbering_problem
    archive = tmp_path / "archive"
    (archive / "a.b").mkdir(parents=True)
    for n in range(1, 4):
        (archive / "a.b" / f"{n}.png").write_bytes(b"x")
    write_video(str(archive / "a.b.mp4"), videos.frames(12))
    refs = list_videos(str(archive))
    assert sorted(r.video_id for r in refs) == ["a.b", "a.b.mp4"] and former_ids(refs) == {}
    # what file systems write beside media is no input: AppleDouble `._` files (they sorted
    # first and became the frames) and a NAS's @eaDir thumbnails (each became a clip)
    nas = tmp_path / "nas" / "clip"
    (nas / "@eaDir" / "001.png").mkdir(parents=True)
    for n in range(1, 21):
        (nas / f"frame_{n:03d}.jpg").write_bytes(b"x")
        (nas / f"._frame_{n:03d}.jpg").write_bytes(b"x")
    (nas / "@eaDir" / "001.png" / "SYNOPHOTO_THUMB_S.jpg").write_bytes(b"x")
    (nas / "._video.mp4").write_bytes(b"x")
    [clip] = list_videos(str(tmp_path / "nas"))
    assert [os.path.basename(u) for u in clip.frame_uris] == [f"frame_{n:03d}.jpg" for n in range(1, 21)]
    assert clip.stray == []


def _still(path, value: int) -> None:
    image = np.full((48, 64), value, np.uint8)
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="gray")):
            container.mux(packet)


def test_a_frame_folders_indices_come_from_the_frame_numbers(tmp_path):
    """UCSD-style labels count frames by file number: a missing `006.tif` must leave a hole
    that decode reports, not move every later frame one index early; a thumbnail is no frame;
    a name FFmpeg would read as a pattern (`%03d`) is still that one file."""
    clip = tmp_path / "Test001"
    clip.mkdir()
    for n in range(1, 16):
        if n != 6:
            _still(clip / f"{n:03d}.png", 10 * n)
    _still(clip / "thumbnail.png", 255)
    _still(tmp_path / "Test001" / "%03d.png", 1)   # no number after the pattern: not a frame
    [ref] = list_videos(str(tmp_path))
    names = [os.path.basename(u) if u else "" for u in ref.frame_uris]
    assert names == [f"{n:03d}.png" if n != 6 else "" for n in range(1, 16)]
    assert sorted(os.path.basename(u) for u in ref.stray) == ["%03d.png", "thumbnail.png"]
    timeline = frame_folder_timeline(ref.frame_uris, 10.0)
    decoded = decode_frame_files(ref.frame_uris, timeline, 0, timeline.num_frames, 27)
    np.testing.assert_array_equal(decoded.frame_index, [i for i in range(15) if i != 5])
    assert decoded.missing == [(5, 6)] and "numbering skips it" in decoded.error
    np.testing.assert_array_equal(decoded.frames[:, 13, 13], [10 * (i + 1) for i in range(15) if i != 5])
    rows = ProbeAndPlan(str(tmp_path / "out"), "cam", 60, 10, {})(ref.to_dict())
    assert rows and rows[0]["num_frames"] == 15
    problems = read_errors(str(tmp_path / "out" / "errors")).to_pylist()
    assert [(p["error_type"], "thumbnail.png" in p["message"]) for p in problems] == [("ignored_files", True)]
    # a note, not a failure: a clean archive with a thumbnail in each clip exits 0 on every run
    from vadray.ingest import IngestSummary

    summary = IngestSummary(videos=1, errors=problems)
    assert (summary.failures, summary.notes, summary.print_and_exit_status()) == (0, 1, 0)
    summary.errors = problems + [{**problems[0], "error_type": "decode_failed"}]
    assert (summary.failures, summary.notes, summary.print_and_exit_status()) == (1, 1, 3)
    # but 40 files beside 60 frames, or two named like frames, may be frames named otherwise, and
    # numbers read in name order or from 4 may not line up with labels: failures (fixes reviews)
    for name, files, kind in (("mixed", [f"{n:03d}.jpg" for n in range(1, 61)] + [f"{n:03d}.png" for n in range(61, 101)],
                               "stray_files"),
                              ("last2", [f"{n:03d}.png" for n in range(1, 19)] + ["019.jpg", "020.jpg"], "stray_files"),
                              ("gaps", [f"{n:03d}.png" for n in range(1, 101) if not 40 <= n < 55], "frame_numbering"),
                              ("late", [f"{n:03d}.png" for n in range(4, 24)], "frame_numbering")):
        folder = tmp_path / "kinds" / name
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_bytes(b"x")
        out = tmp_path / "kinds-out" / name
        ProbeAndPlan(str(out), "cam", 60, 10, {})(list_videos(str(folder))[0].to_dict())
        rows = read_errors(str(out / "errors")).to_pylist()
        assert [r["error_type"] for r in rows] == [kind], name
        assert IngestSummary(videos=1, errors=rows).print_and_exit_status() == 3
    # the frame number is the number that varies, wherever it sits; numbers that are not a frame
    # count (milliseconds, a stray 1000000.png) keep the name order; UCSD's _gt masks are no clip
    for name, names, expected in (
            ("cams", [f"frame_{n:03d}_cam2.png" for n in range(1, 11) if n != 3],
             [f"frame_{n:03d}_cam2.png" if n != 3 else "" for n in range(1, 11)]),
            ("dates", [f"2024050{1 + n // 6}_{n:04d}.jpg" for n in range(12) if n != 8],   # numbering runs on
             [f"2024050{1 + n // 6}_{n:04d}.jpg" if n != 8 else "" for n in range(12)]),
            ("ms", [f"{1714550400000 + 100 * n}.jpg" for n in range(12)], [f"{1714550400000 + 100 * n}.jpg"
                                                                           for n in range(12)]),
            ("outlier", [f"{n:03d}.png" for n in range(1, 11)] + ["1000000.png"],
             [f"{n:03d}.png" for n in range(1, 11)] + ["1000000.png"]),
            ("nofirst", [f"{n:03d}.tif" for n in range(2, 16)], [""] + [f"{n:03d}.tif" for n in range(2, 16)]),
            ("late", [f"{n:04d}.png" for n in range(500, 512)], [f"{n:04d}.png" for n in range(500, 512)]),
            ("halves", [f"f{n:04d}.png" for n in range(0, 40, 2)], [f"f{n:04d}.png" for n in range(0, 40, 2)]),
            ("lost2", [f"{n:03d}.png" for n in range(3, 15)], ["", ""] + [f"{n:03d}.png" for n in range(3, 15)]),
            ("restart", [f"d1_{n:03d}.png" for n in range(1, 51)] + [f"d2_{n:03d}.png" for n in range(50, 100)],
             [f"d1_{n:03d}.png" for n in range(1, 51)] + [f"d2_{n:03d}.png" for n in range(50, 100)])):
        folder = tmp_path / "more" / name
        folder.mkdir(parents=True)
        for n in names:
            (folder / n).write_bytes(b"x")
        [ref] = list_videos(str(folder))
        assert [os.path.basename(u) for u in ref.frame_uris] == expected and ref.stray == [], name
        said = {"outlier": "too many gaps", "late": "start at 500", "halves": "step by 2",
                "restart": "start again"}.get(name)
        assert (said in ref.numbering_problem) if said else ref.numbering_problem == "", (name, ref.numbering_problem)
    # two cameras (or a day each) restarting the numbering: name order, with a numbering_problem (a row)
    folder = tmp_path / "more" / "two"
    folder.mkdir()
    for cam in (1, 2):
        for n in range(1, 6):
            (folder / f"cam{cam}_{n:04d}.png").write_bytes(b"x")
    [ref] = list_videos(str(folder))
    assert len(ref.frame_uris) == 10 and "start again 2 times" in ref.numbering_problem
    (tmp_path / "more" / "Test001_gt").mkdir()
    (tmp_path / "more" / "Test001_gt" / "001.bmp").write_bytes(b"x")
    assert "Test001_gt" not in [r.video_id for r in list_videos(str(tmp_path / "more"))]
    pattern = [str(clip / "%03d.png")] * 10   # FFmpeg's own I/O would open 001.png (value 10)
    decoded = decode_frame_files(pattern, frame_folder_timeline(pattern, 10.0), 0, 10, 27)
    assert not decoded.error and (decoded.frames == 1).all()


def test_listing_keeps_colliding_ids_apart(tmp_path):
    """`a.mp4`, `a.mkv` and a frame folder `a/` would all be `a`: one would overwrite the others."""
    for name in ("a.mp4", "a.MKV", "b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"x")
    refs = list_videos(str(tmp_path))
    assert [r.video_id for r in refs] == ["a", "a.MKV", "a.mp4", "b"]
    assert refs[0].is_frame_folder and refs[2].uri.endswith("/a.mp4")
    # an id made that way can be another file's own (`a.mp4.mkv` is `a.mp4`): that one keeps
    # its extension too (storage review: two inputs had the id `a.mp4`)
    (tmp_path / "a.mp4.mkv").write_bytes(b"x")
    assert [r.video_id for r in list_videos(str(tmp_path))] == ["a", "a.MKV", "a.mp4", "a.mp4.mkv", "b"]


def test_listing_follows_symlinked_folders_once(tmp_path, caplog):
    """fsspec lists a symlink to a folder as one entry of type 'other': an archive whose day
    folders are links (to other disks) lost their videos, named only as '(none) 1' in an info
    line (storage review). A link back into what is listed already is not followed twice."""
    (tmp_path / "disk2" / "2024-05-02").mkdir(parents=True)
    (tmp_path / "disk2" / "2024-05-02" / "0900.mp4").write_bytes(b"x")
    (tmp_path / "cam" / "2024-05-01").mkdir(parents=True)
    (tmp_path / "cam" / "2024-05-01" / "0900.mp4").write_bytes(b"x")
    (tmp_path / "cam" / "2024-05-02").symlink_to(tmp_path / "disk2" / "2024-05-02")
    (tmp_path / "cam" / "again").symlink_to(tmp_path / "cam" / "2024-05-01")
    (tmp_path / "disk2" / "2024-05-02" / "up").symlink_to(tmp_path / "cam")
    (tmp_path / "cam" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")   # an errors row later
    refs = list_videos(str(tmp_path / "cam"))
    assert [r.video_id for r in refs] == ["2024-05-01/0900", "2024-05-02/0900", "gone"]
    assert refs[1].uri == str(tmp_path / "cam" / "2024-05-02" / "0900.mp4")
    assert "links to" in caplog.text and "again" in caplog.text
    # a link to a camera and another to one of its days: the camera's is followed (whatever the
    # links are called) and lists both days; the day's would list one of them twice
    for day, name in (("day1", "a"), ("day2", "b")):
        (tmp_path / "ext" / "cam" / day).mkdir(parents=True)
        (tmp_path / "ext" / "cam" / day / f"{name}.mp4").write_bytes(b"x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a_day1").symlink_to(tmp_path / "ext" / "cam" / "day1")
    (tmp_path / "src" / "b_cam").symlink_to(tmp_path / "ext" / "cam")
    assert [r.video_id for r in list_videos(str(tmp_path / "src"))] == ["b_cam/day1/a", "b_cam/day2/b"]


def test_listing_unreachable_source_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        list_videos(str(tmp_path / "nope"))


@pytest.mark.parametrize("num_frames,per_second", [(1, 1.0), (29, 1.0), (30, 1.0), (31, 1.0), (250, 2.5)])
def test_segments_tile_exactly_and_overlap(num_frames, per_second):
    segments = plan_segments(num_frames, fps=10, segment_seconds=per_second, overlap=10)
    owned = np.concatenate([np.arange(s.first, s.last) for s in segments])
    np.testing.assert_array_equal(owned, np.arange(num_frames))  # nothing lost, nothing twice
    for s in segments:
        assert s.decode_last == min(s.last + 10, num_frames)


def test_pack_units_keeps_order_and_both_budgets():
    pixels, frames = [40, 40, 30, 500, 10, 10, 10], [4, 4, 4, 50, 1, 1, 1]
    units = pack_units(pixels, frames, pixel_budget=100, frame_budget=9)
    assert units == [[0, 1], [2], [3], [4, 5, 6]]  # 40+40+30 > 100; 500 alone; 4+4+4 > 9
    assert [i for unit in units for i in unit] == list(range(len(pixels)))  # each once, in order
    assert pack_units([5, 5, 5], [1, 1, 1], 100, 100) == [[0, 1, 2]]
    assert pack_units([], [], 1, 1) == []
    with pytest.raises(ValueError):
        pack_units([1], [1], 0, 1)


def test_probe_units_hold_every_segment_once(tmp_path):
    for name, n in (("a", 30), ("b", 12), ("c", 45)):
        write_video(str(tmp_path / f"{name}.mp4"), videos.frames(n))
    listing = pa.Table.from_pylist([r.to_dict() for r in list_videos(str(tmp_path))])
    one_by_one = ProbeAndPlan(str(tmp_path / "out"), "cam", 1.3, 10, {}).segment_rows(listing).to_pylist()
    budget = 64 * 48 * 26  # two 13-frame segments of 64×48 per unit
    units = ProbeAndPlan(str(tmp_path / "out"), "cam", 1.3, 10, {}, unit_pixels=budget,
                         unit_frames=1000).unit_rows(listing).to_pylist()
    assert [seg for unit in units for seg in unit["segments"]] == one_by_one
    assert all(sum((s["decode_last"] - s["first"]) * 64 * 48 for s in u["segments"]) <= budget for u in units)
    assert max(len(u["segments"]) for u in units) == 2 and len(units) < len(one_by_one)


def test_decode_in_segments_equals_whole_video(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, videos.frames(45))  # keyframe every 20 frames: seeks land mid-GOP
    timeline = probe(path)
    whole = decode_segment(path, timeline, 0, timeline.num_frames, 27)
    assert whole.frames.shape == (45, 27, 27) and not whole.error
    parts = [decode_segment(path, timeline, s.first, s.last, 27) for s in plan_segments(45, 10, 1.3, overlap=0)]
    np.testing.assert_array_equal(np.concatenate([p.frame_index for p in parts]), np.arange(45))
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), whole.frames)
    np.testing.assert_allclose(whole.time_s, np.arange(45) / 10.0)


UNUSUAL = {
    "ten_bit.mp4": videos.h264_10bit,
    "alpha.mov": videos.alpha_png_mov,
    "rgb.mkv": videos.rgb_ffv1_mkv,
    "uhd.mp4": videos.h264_4k,
    "vfr.mkv": videos.vfr_mkv,
    "part2.avi": videos.mpeg4_avi,
    "size_change.ts": videos.resolution_change_ts,
    # valid files whose container seems to promise more than they hold (no truncated row)
    "late_start.mkv": videos.late_start_mkv,
    "long_last_frame.mkv": videos.long_last_frame,
    "long_last_frame.mp4": videos.long_last_frame,
    "dropped.avi": videos.dropped_frames_avi,
    "copy_cut.mp4": videos.copy_cut_mp4,
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_but_valid_video_decodes(tmp_path, name):
    path = str(tmp_path / name)
    expected_times = UNUSUAL[name](path)
    timeline = probe(path)
    assert timeline.warnings == []  # nothing declared is missing: no false alarm
    decoded = decode_segment(path, timeline, 0, timeline.num_frames, 27)
    assert not decoded.error and decoded.frames.shape == (timeline.num_frames, 27, 27)
    assert decoded.frames.dtype == np.uint8 and decoded.frames.std() > 1  # real content, not blank
    if expected_times is not None:  # variable frame rate: times come from the pts, not i / fps
        np.testing.assert_allclose(decoded.time_s, expected_times, atol=1e-3)


def test_h264_with_b_frames_in_avi_keeps_the_decoders_frame_order(tmp_path):
    """The decoder's output order is the presentation order; whole or in segments (each seeks
    to its keyframe), the frames are those of a plain decode, in that order."""
    import av

    path = str(tmp_path / "bf.avi")
    videos.h264_bframes_avi(path, n=30)
    with av.open(path) as container:
        plain = np.stack([GreyScaler(27)(f) for f in container.decode(video=0)])
    timeline = probe(path)
    assert timeline.num_frames == 30 and timeline.warnings == []
    whole = decode_segment(path, timeline, 0, 30, 27)
    assert not whole.error
    np.testing.assert_array_equal(whole.frames, plain)
    parts = [decode_segment(path, timeline, a, b, 27) for a, b in ((0, 13), (13, 27), (27, 30))]
    assert not any(p.error for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), plain)

    # A corrupt packet in the second GOP: what is kept is still in its place, what the decoder
    # held when it failed is reported missing up to the next keyframe (frame 24).
    with av.open(path) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(video=0) if p.size][15]
    data = bytearray(open(path, "rb").read())
    data[pos:pos + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))
    for a, b in ((0, 30), (13, 27)):
        hit = decode_segment(path, probe(path), a, b, 27)
        assert "corrupt packet" in hit.error and hit.missing == [(max(a, 13), 24)]
        np.testing.assert_array_equal(hit.frames, plain[hit.frame_index])


def test_an_avi_cut_before_its_index_keeps_every_frame_in_segments(tmp_path):
    """A recorder that died before writing the AVI's index: seeks land past their target, so
    segments decode from the start; with B-frames the labels there are in decode order, which
    must still be noticed. The header's count shows the cut (~6 of 60 frames), even though AVI
    counts dropped frames too."""
    import av

    path = str(tmp_path / "dvr.avi")
    videos.h264_bframes_avi(path, n=60, gop=10)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) * 9 // 10])
    plain = []
    with av.open(path) as container:
        for packet in container.demux(video=0):
            try:
                plain += [GreyScaler(27)(f) for f in packet.decode()]
            except av.error.FFmpegError:
                pass   # the cut last packet
    timeline = probe(path)
    assert [kind for kind, _ in timeline.warnings] == ["truncated"]
    parts = [decode_segment(path, timeline, s.first, s.last, 27)
             for s in plan_segments(timeline.num_frames, 10, 1.0, overlap=0)]
    index = np.concatenate([p.frame_index for p in parts])
    # the last frame is the cut packet's, which the decoder patched (a flagged, concealed
    # picture): left out and said, not stored as footage
    np.testing.assert_array_equal(index, np.arange(len(plain) - 1))
    assert "a damaged picture" in parts[-1].error and parts[-1].missing == [(len(plain) - 1, len(plain))]
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), np.stack(plain)[:-1])


def test_grey_content_is_preserved_across_pixel_formats(tmp_path):
    reference = str(tmp_path / "ref.mkv")
    rgb = str(tmp_path / "rgb.mkv")
    videos.rgb_ffv1_mkv(rgb)  # lossless RGB
    write_video(reference, videos.frames(12), codec="ffv1", pix_fmt="gray")
    a = decode_segment(rgb, probe(rgb), 0, 12, 27).frames.astype(int)
    b = decode_segment(reference, probe(reference), 0, 12, 27).frames.astype(int)
    assert np.abs(a - b).mean() < 3


@pytest.mark.parametrize("name, says", [("cut.mkv", "declares 4.00 s"), ("cut.mp4", "lists 40 frames")])
def test_a_truncated_file_is_reported_and_its_frames_kept(tmp_path, name, says):
    """A demuxer ends quietly where a truncated file ends; what the container declares (its
    duration, its frame count) shows the loss, and the frames found still decode."""
    path = str(tmp_path / name)
    videos.truncated(path)
    timeline = probe(path)
    assert [kind for kind, _ in timeline.warnings] == ["truncated"], timeline.warnings
    assert says in timeline.warnings[0][1]
    assert 10 <= timeline.num_frames < 40
    decoded = decode_segment(path, timeline, 0, timeline.num_frames, 27)
    assert decoded.frames.shape[0] >= timeline.num_frames - 1  # at most the cut packet is lost


def test_a_corrupt_packet_costs_the_frames_up_to_the_next_keyframe_only(tmp_path):
    path = str(tmp_path / "hit.mp4")
    videos.corrupt_packet_mp4(path, n=40, bad=15)
    timeline = probe(path)
    assert timeline.num_frames == 40
    decoded = decode_segment(path, timeline, 0, 40, 27)
    assert "corrupt packet" in decoded.error
    kept = set(decoded.frame_index.tolist())
    assert set(range(15)) <= kept and set(range(20, 40)) <= kept  # the next keyframe is frame 20
    assert decoded.missing and all(15 <= a and b <= 20 for a, b in decoded.missing)


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_picture_the_decoder_patched_is_left_out_and_said(tmp_path, container):
    """Half of a P-frame's bytes overwritten: FFmpeg's H.264 decoder does not refuse the packet,
    it flags the picture corrupt and patches it from the one before (the frames after build on
    the patch). Those frames were stored as footage with no errors row (ingest review)."""
    import av

    path = str(tmp_path / f"hit.{container}")
    videos._encode(path, videos.frames(40), "libx264", "yuv420p", "gray", options={"g": "10", "bf": "0"})
    with av.open(path) as opened:
        plain = np.stack([GreyScaler(27)(f) for f in opened.decode(video=0)])
    with av.open(path) as opened:
        packets = [(p.pos, p.size) for p in opened.demux(video=0) if p.size]
    pos, size = packets[13]
    data = bytearray(open(path, "rb").read())
    data[pos + size // 2: pos + size - 4] = np.random.default_rng(0).integers(0, 256, size - 4 - size // 2,
                                                                          dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))
    with av.open(path) as opened:
        flagged = [i for i, f in enumerate(opened.decode(video=0)) if f.is_corrupt]
    assert flagged == [13]   # what the decoder says of this file (no exception)
    timeline = probe(path)
    decoded = decode_segment(path, timeline, 0, 40, 27)
    assert "a damaged picture" in decoded.error and decoded.missing == [(13, 20)]   # up to the next keyframe
    np.testing.assert_array_equal(decoded.frames, np.concatenate([plain[:13], plain[20:]]))
    # a segment that starts after the damaged picture, before the next keyframe: its decode starts
    # at the keyframe before, so its first frames build on the patch too (review of the change)
    for first in (14, 15):
        part = decode_segment(path, timeline, first, first + 10, 27)
        assert "a damaged picture" in part.error and part.missing == [(first, 20)]
        np.testing.assert_array_equal(part.frames, plain[20:first + 10])


def test_a_variable_rate_transport_stream_gets_its_frame_rate_from_its_timestamps(tmp_path):
    """FFmpeg states no average rate for a variable-rate MPEG-TS and guesses the clock's 90 kHz:
    fps 90000 made the whole video one segment, whatever its length (ingest review)."""
    import fractions

    path = str(tmp_path / "vfr.ts")
    steps = np.random.default_rng(2).integers(1800, 27000, size=59)   # 20-300 ms apart, any tick
    pts = np.r_[0, np.cumsum(steps)].tolist()
    videos._encode(path, videos.frames(60), "libx264", "yuv420p", "gray", pts=pts,
                   time_base=fractions.Fraction(1, 90000))
    timeline = probe(path)
    assert timeline.num_frames == 60 and 1 < timeline.fps < 60
    assert len(plan_segments(60, timeline.fps, 1.0, overlap=0)) > 1
    # an AVI's time base is one frame, so its rate is one frame a tick: stated, not guessed, it
    # stands, and a capture that dropped 2 frames in 3 keeps 25 fps and its full count
    sparse = str(tmp_path / "sparse.avi")
    videos._encode(sparse, videos.frames(30), "mjpeg", "yuvj420p", "gray", rate=25, pts=[3 * i for i in range(30)],
                   time_base=fractions.Fraction(1, 25))
    assert (probe(sparse).fps, probe(sparse).warnings) == (25.0, [])


def test_a_transport_stream_cut_mid_packet_is_reported_truncated(tmp_path):
    """MPEG-TS states no frame count or duration, so a cut file passed silently (ingest review);
    a file that ends inside a 188-byte packet is a cut one."""
    path = tmp_path / "cut.ts"
    videos._encode(str(path), videos.frames(40), "libx264", "yuv420p", "gray")
    whole = path.read_bytes()
    assert probe(str(path)).warnings == []
    path.write_bytes(whole[: (len(whole) * 9 // 10) // 188 * 188 + 94])
    timeline = probe(str(path))
    assert [kind for kind, _ in timeline.warnings] == ["truncated"] and 20 < timeline.num_frames < 40
    assert "inside a transport-stream packet" in timeline.warnings[0][1]


def test_a_codec_without_a_decoder_is_an_errors_row_that_says_so(tmp_path):
    from vadray.probe import InputError

    path = tmp_path / "odd.mp4"
    videos._encode(str(path), videos.frames(12), "libx264", "yuv420p", "gray")
    path.write_bytes(path.read_bytes().replace(b"avc1", b"zzz1"))
    with pytest.raises(InputError) as info:
        probe(str(path))
    assert info.value.error_type == "unsupported_codec" and "no decoder" in str(info.value)


def test_repeated_timestamps_are_reported(tmp_path):
    path = str(tmp_path / "dup.mkv")
    videos.repeated_pts_mkv(path, n=20)
    timeline = probe(path)
    assert timeline.num_frames == 19
    assert [kind for kind, _ in timeline.warnings] == ["timestamps"]
    assert "1 of 20 frames" in timeline.warnings[0][1]


def test_bad_inputs_get_a_reason(tmp_path):
    expected = videos.bad_inputs(str(tmp_path))
    for stem, error_type in expected.items():
        path = next(str(p) for p in tmp_path.iterdir() if p.stem == stem)
        with pytest.raises(InputError) as info:
            probe(path)
        assert info.value.error_type == error_type, (stem, str(info.value))
        assert str(info.value)


@pytest.mark.parametrize("start_a,start_b,b_frames", [(10.0, 0.0, 0), (0.0, 0.05, 0), (0.0, 0.0, 2), (70.0, 0.0, 0),
                                                      (72100.0, 102.0, 2), (0.0, 0.0, 8)])
def test_timestamps_that_reset_keep_every_frame_in_file_order(tmp_path, start_a, start_b, b_frames):
    """`cat a.ts b.ts`: the second recording's timestamps start below where the first's end
    (at 0 again, half a frame later, at exactly the same times, or 70 s back, which FFmpeg
    would read as a 33-bit wrap). Every frame is kept, in file order, whole or in segments, and
    times run on; a warning row says what was found."""
    path = str(tmp_path / "joined.ts")
    videos.concatenated_ts(path, start_a, start_b, b_frames)
    with av.open(path) as container:
        plain = np.stack([GreyScaler(27)(f) for f in container.decode(video=0)])
    timeline = probe(path)
    assert timeline.num_frames == len(plain) == 40 and len(timeline.piece_offsets) == 2
    assert [kind for kind, _ in timeline.warnings] == ["timestamps"] and "frame 20" in timeline.warnings[0][1]
    for seconds in (60, 0.7):
        parts = [decode_segment(path, timeline, s.first, s.last, 27) for s in plan_segments(40, 10, seconds, overlap=0)]
        assert not any(p.error for p in parts)
        np.testing.assert_array_equal(np.concatenate([p.frame_index for p in parts]), np.arange(40))
        np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), plain)
        np.testing.assert_allclose(np.concatenate([p.time_s for p in parts]), np.arange(40) / 10, atol=1e-6)


@pytest.mark.parametrize("container, codec", [("mpg", "mpeg1video"), ("ts", "libx264")])
def test_program_and_transport_streams_are_sought_by_bytes(tmp_path, monkeypatch, container, codec):
    """After a time seek FFmpeg's MPEG-PS demuxer stamped each frame with the next one's time,
    so a segment starting at 23 stored frame 22 there and lost its last frame, silently; in
    MPEG-TS the seek always landed late and every segment decoded the file from its start
    (ingest review). Segments now seek to their keyframes' bytes, checked on landing."""
    import vadray.decode as decode

    path = str(tmp_path / f"v.{container}")
    images = videos.frames(60)
    videos._encode(path, images, codec, "yuv420p", "gray", rate=25, options={"g": "12"})
    with av.open(path) as opened:
        plain = np.stack([GreyScaler(27)(f) for f in opened.decode(video=0)])
    timeline = probe(path)
    passes = []
    whole_pass = decode._decode_pass
    monkeypatch.setattr(decode, "_decode_pass", lambda *a, **k: passes.append(a[5]) or whole_pass(*a, **k))
    for first in range(1, 40, 3):
        part = decode_segment(path, timeline, first, first + 6, 27)
        assert part.frame_index.tolist() == list(range(first, first + 6)) and not part.error
        np.testing.assert_array_equal(part.frames, plain[first:first + 6], err_msg=f"segment at {first}")
    # one pass each: from two keyframes back, or from the start before the second keyframe and
    # where the demuxer gives a keyframe no byte position (small MPEG-PS pictures share a pack)
    assert len(passes) == len(range(1, 40, 3)) and passes[-1] is (container == "ts")


def test_a_long_pause_forward_is_no_reset(tmp_path):
    """14 hours between two recordings joined in one file: the times keep the pause."""
    path = str(tmp_path / "paused.ts")
    videos.joined_ts(path, [0.0, 50400.0])
    timeline = probe(path)
    assert timeline.piece_offsets == [0] and timeline.warnings == []   # one piece (MPEG-TS: sought by bytes)
    assert timeline.time_s(np.array([19, 20])).round(1).tolist() == [1.9, 50400.0]


@pytest.mark.parametrize("b_frames", [0, 2])
def test_a_true_33_bit_wrap_is_no_reset(tmp_path, b_frames):
    """An MPEG-TS clock that wraps at 2^33 ticks (26.5 h) runs on: FFmpeg unwraps it."""
    import fractions

    path = str(tmp_path / "wrap.ts")
    start, tb = 2**33 - 20 * 9000, fractions.Fraction(1, 90000)
    videos._encode(path, videos.frames(40), "libx264", "yuv420p", "gray", options={"bf": str(b_frames), "g": "10"},
                   pts=[start + 9000 * i for i in range(40)], time_base=tb)
    with av.open(path) as container:
        plain = np.stack([GreyScaler(27)(f) for f in container.decode(video=0)])
    timeline = probe(path)
    assert timeline.piece_offsets == [0] and timeline.warnings == []
    parts = [decode_segment(path, timeline, s.first, s.last, 27) for s in plan_segments(40, 10, 0.7, overlap=0)]
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), plain)
    np.testing.assert_allclose(np.concatenate([p.time_s for p in parts]), np.arange(40) / 10, atol=1e-6)


@pytest.mark.parametrize("starts,cuts,n", [([10.0, 0.0], [0, 4], 20), ([0.0, 0.0, 0.0], [0, 4, 0], 30),
                                          ([0.0, 0.0, 0.0], [0, 4, 0], 20), ([5.0, 3.0, 1.0, 0.0], [0, 3, 5, 2], 25)])
def test_a_reset_into_a_recording_cut_mid_gop_keeps_what_decodes(tmp_path, starts, cuts, n):
    """With B-frames the decoder hands out one recording's last frame after the next one's
    first, and recordings share timestamps: every frame must land in its own recording's
    slots, the first and last uncut recordings' frames exactly in place. A recording cut
    mid-GOP is skipped to its first keyframe and those frames reported missing: decoded on the
    previous recording's pictures they would be noise (three reviews found one case each)."""
    path = str(tmp_path / "joined.ts")
    videos.joined_ts(path, starts, b_frames=2, n=n, cuts=cuts)
    source = [np.stack([GreyScaler(27)(av.VideoFrame.from_ndarray(image, format="gray"))
                        for image in videos.frames(n, seed=k)]) for k in range(len(starts))]
    timeline = probe(path)
    owner = np.concatenate([np.full(n - cut, k) for k, cut in enumerate(cuts)])   # slots, recording by recording
    assert timeline.num_frames == owner.size
    whole = decode_segment(path, timeline, 0, timeline.num_frames, 27)
    for index, frame in zip(whole.frame_index, whole.frames):
        errors = np.square(source[owner[index]].astype(float) - frame).mean(axis=(1, 2))
        assert errors.min() < 4, (int(index), float(errors.min()))   # a picture of its own recording, not noise
        if cuts[owner[index]] == 0:                                   # an uncut recording: the very frame
            assert int(np.argmin(errors)) == index - int(np.flatnonzero(owner == owner[index])[0])
    assert (whole.missing == []) == (not any(cuts)) and whole.frames.shape[0] >= owner.size - 2 * sum(cuts) - 10
    parts = [decode_segment(path, timeline, s.first, s.last, 27)
             for s in plan_segments(timeline.num_frames, 10, 0.7, overlap=0)]
    np.testing.assert_array_equal(np.concatenate([p.frame_index for p in parts]), whole.frame_index)
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), whole.frames)


def test_a_file_whose_timestamps_reset_is_sought_by_bytes_not_decoded_from_its_start(tmp_path, monkeypatch):
    """Each segment of such a file starts at the keyframe before it (probe records keyframes'
    byte positions), so a long file costs one decode, not one per segment from its start. A
    seek that lands elsewhere falls back to decoding from the start, with the same frames."""
    import vadray.decode as decode

    path = str(tmp_path / "joined.ts")
    videos.joined_ts(path, [10.0, 0.0, 2.0], b_frames=2, n=40)
    with av.open(path) as container:
        plain = np.stack([GreyScaler(27)(f) for f in container.decode(video=0)])
    timeline = probe(path)
    assert timeline.num_frames == 120 and len(timeline.piece_offsets) == 3 and len(timeline.keyframes) == 12
    out_of_decoder = []
    original = decode._decode_frames

    def counted(*args, **kwargs):
        for frame in original(*args, **kwargs):
            out_of_decoder.append(frame)
            yield frame

    monkeypatch.setattr(decode, "_decode_frames", counted)
    late = decode_segment(path, timeline, 95, 105, 27)   # in the third recording
    np.testing.assert_array_equal(late.frames, plain[95:105])
    assert len(out_of_decoder) <= 10 + 10 + 10 + decode.REORDER_FRAMES + 2   # two GOPs, then past its end
    out_of_decoder.clear()
    timeline.keyframes[:, 2] += 1                                       # positions that are no packet's
    missed = decode_segment(path, timeline, 95, 105, 27)
    np.testing.assert_array_equal(missed.frames, plain[95:105])
    assert len(out_of_decoder) >= 105                                   # from the start
    timeline = probe(path)
    rows = ProbeAndPlan(str(tmp_path / "out"), "cam", 0.7, 10, {})(
        {**list_videos(path)[0].to_dict()})
    assert len(rows) > 10 and all(len(row["keyframes"]) == 6 for row in rows if row["first"] >= 20)
    parts = [decode_planned(row, 27, str(tmp_path / "out" / "errors"), {}) for row in rows]
    np.testing.assert_array_equal(np.concatenate([p.frame_index for p in parts]), np.arange(120))
    np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), plain)


def _joined(path: str, starts: list[float], fmt: str, codec: str, options: dict, rate: int = 10, n: int = 40) -> None:
    import fractions

    parts = []
    for k, start in enumerate(starts):
        with av.open(f"{path}.{k}", "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            stream.options = options
            tb = fractions.Fraction(1, 90000) if fmt == "mpegts" else fractions.Fraction(1, rate)
            stream.time_base = stream.codec_context.time_base = tb
            packets = []
            for i, image in enumerate(videos.frames(n, seed=k)):
                frame = av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuv420p")
                frame.pts, frame.time_base = round(start / tb) + round(i / rate / tb), tb
                packets += stream.encode(frame)
            for packet in packets + list(stream.encode()):
                container.mux(packet)
        parts.append(open(f"{path}.{k}", "rb").read())
        os.remove(f"{path}.{k}")
    open(path, "wb").write(b"".join(parts))


@pytest.mark.parametrize("kind", ["mpeg_ps", "intra_refresh"])
def test_a_byte_seek_that_cannot_land_on_a_usable_keyframe_costs_no_frames(tmp_path, kind, monkeypatch):
    """MPEG-PS hands out the tail of the picture before a keyframe at the keyframe's position
    (its timestamp belongs to neither); x264's intra refresh flags recovery points as keyframes,
    after which the decoder outputs nothing for a while (fixes review): every segment still gets
    the frames a decode from the start gives, and intra refresh is still sought."""
    import vadray.decode as decode

    path = str(tmp_path / ("joined.mpg" if kind == "mpeg_ps" else "joined.ts"))
    if kind == "mpeg_ps":
        _joined(path, [10.0, 0.0, 2.0], "vob", "mpeg2video", {"bf": "2", "g": "10"}, rate=25)
    else:
        _joined(path, [10.0, 0.0, 2.0], "mpegts", "libx264", {"bf": "0", "g": "10", "x264-params": "intra-refresh=1"})
    timeline = probe(path)
    assert len(timeline.piece_offsets) == 3
    whole = decode_segment(path, timeline, 0, timeline.num_frames, 27)
    yielded = []
    original = decode._decode_frames

    def counted(*args, **kwargs):
        yielded.append(0)
        for frame in original(*args, **kwargs):
            yielded[-1] += 1
            yield frame

    monkeypatch.setattr(decode, "_decode_frames", counted)
    for first in range(0, timeline.num_frames - 5):
        part = decode_segment(path, timeline, first, first + 5, 27)
        keep = (whole.frame_index >= first) & (whole.frame_index < first + 5)
        np.testing.assert_array_equal(part.frame_index, whole.frame_index[keep], err_msg=str(first))
        np.testing.assert_array_equal(part.frames, whole.frames[keep], err_msg=str(first))
        if kind == "intra_refresh" and first >= 20:   # one pass from two keyframes back
            assert len(yielded) == 1 and yielded[0] <= 10 + 10 + 5 + decode.REORDER_FRAMES + 2, (first, yielded)
        yielded.clear()


def test_a_segment_seeks_from_the_keyframe_before_the_last_one_at_or_before_it():
    from vadray.probe import Timeline

    timeline = Timeline(np.arange(0, 400, 10), 0.01, 0, 10.0, 64, 48, "h264", piece_offsets=[0, 200],
                        keyframes=np.array([[100, 0, 10], [200, 1, 20], [300, 1, 30]]))
    assert timeline.keyframe_before(300) == [200, 1, 20]       # a frame that is a keyframe counts as one
    assert timeline.keyframe_before(299) == [100, 0, 10]
    assert timeline.keyframe_before(199) == [] and timeline.seek_keyframes(199).tolist() == [[100, 0, 10]]
    assert timeline.seek_keyframes(350).tolist() == [[200, 1, 20], [300, 1, 30]]


def test_frames_without_timestamps_are_not_lost_silently(tmp_path):
    """H.264 in MPEG-PS (.mpg): most packets carry neither pts nor dts."""
    path = str(tmp_path / "h264.mpg")
    videos._encode(path, videos.frames(60), "libx264", "yuv420p", "gray", options={"bf": "2", "g": "10"})
    with pytest.raises(InputError, match="carry no timestamp"):
        probe(path)


def test_a_cover_picture_is_not_the_video(tmp_path):
    videos.audio_only_mp4(str(tmp_path / "song.mp4"), cover=True)
    with pytest.raises(InputError, match="only a cover picture") as info:
        probe(str(tmp_path / "song.mp4"))
    assert info.value.error_type == "no_video_stream"


def test_a_recording_cut_mid_gop_says_so(tmp_path):
    (tmp_path / "src").mkdir()
    before_keyframe = videos.mid_gop_ts(str(tmp_path / "src" / "cut.ts"))
    [ref] = list_videos(str(tmp_path / "src"))
    errors_uri = str(tmp_path / "out" / "errors")
    [seg] = ProbeAndPlan(str(tmp_path / "out"), "cam", 60, 10, {})(ref.to_dict())
    decoded = decode_planned(seg, 27, errors_uri, {})
    assert decoded.frame_index[0] == before_keyframe and decoded.frame_index[-1] == seg["num_frames"] - 1
    [row] = read_errors(errors_uri).to_pylist()
    assert row["error_type"] == "starts_mid_gop" and f"starts {before_keyframe} frames before" in row["message"]
    assert not decoded.retry   # the same file leaves the same gap: score marks it done
    # frames that stop coming with no decoder error (a failed read can look like that): retry
    import vadray.stages as stages
    from vadray.decode import NOT_DECODED, DecodedFrames

    def ends_early(uri, timeline, first, last, size, storage_options):
        return DecodedFrames(np.arange(5), np.arange(5) / 10, np.zeros((5, size, size), np.uint8),
                             [(5, last)], NOT_DECODED)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "decode_segment", ends_early)
        assert decode_planned(seg, 27, str(tmp_path / "other-errors"), {}).retry
    with pytest.MonkeyPatch.context() as patch:   # FFmpeg out of memory (ENOMEM): no fixed gap either
        import errno

        import vadray.decode
        patch.setattr(vadray.decode, "_av_open", lambda *args: av.error.err_check(-errno.ENOMEM))
        assert decode_planned(seg, 27, str(tmp_path / "other-errors"), {}).retry
    # the file goes between probe and decode: the decode raises, which a rerun may not repeat
    (tmp_path / "src" / "cut.ts").unlink()
    again = decode_planned(seg, 27, errors_uri, {}, model_id="m-0123456789ab")
    assert again.retry and again.frame_index.size == 0
    rows = read_errors(errors_uri, model_id="m-0123456789ab").to_pylist()
    assert {r["model_id"] for r in rows} == {None, "m-0123456789ab"}


@pytest.mark.parametrize("n", [1, 17, 256, 257, 600])
def test_partial_sums_are_exact_integers_at_the_uint16_limits(n):
    """The sums add uint16 blocks: all-white frames over block edges must not wrap."""
    rng = np.random.default_rng(n)
    frames = rng.integers(0, 256, size=(n, 7, 9), dtype=np.uint8)
    frames[: n // 2] = 255
    sums = PartialSums.of(frames)
    wide = frames.astype(np.int64)
    assert sums.count == n
    np.testing.assert_array_equal(sums.sum_image, wide.sum(axis=0))
    assert sums.sum_image.dtype == np.int64
    assert sums.sumsq == int((wide ** 2).sum())
    assert isinstance(sums.sumsq, int)


def test_norm_stats_match_direct_numpy_and_add_up():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(40, 11, 11), dtype=np.uint8)
    sums = PartialSums.of(frames[:13]) + PartialSums.of(frames[13:])
    stats = NormStats.from_sums(sums)
    x = frames / 255.0
    np.testing.assert_allclose(stats.mean_image, x.mean(axis=0), rtol=1e-6)
    assert stats.std == pytest.approx((x - x.mean(axis=0)).std(), rel=1e-6)
    assert stats.pixel_mean == pytest.approx(x.mean()) and stats.pixel_std == pytest.approx(x.std())
    z = stats.normalize(frames)
    assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, rel=1e-4)
    # Global, not per-frame: a brighter frame keeps its extra energy after normalisation.
    bright = stats.normalize(np.clip(frames[:1].astype(int) + 60, 0, 255).astype(np.uint8))
    assert bright.mean() > 0.5
    again = NormStats.from_dict(json.loads(json.dumps(stats.to_dict())))   # as stats.json holds it
    np.testing.assert_array_equal(again.mean_image, stats.mean_image)
    with pytest.raises(ValueError, match="--size"):
        stats.normalize(np.zeros((1, 5, 5), np.uint8))


def test_volume_starts_cover_every_frame():
    for n, hop in [(10, 1), (23, 4), (37, 10)]:
        starts = volume_starts(n, T=10, stride=1, hop=hop)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s:s + 10] = True
        assert covered.all() and starts[-1] == n - 10
    assert volume_starts(27, T=10, stride=3).size == 0 and volume_starts(28, T=10, stride=3).tolist() == [0]
    vols = gather(np.arange(30)[:, None, None] * np.ones((1, 2, 2)), np.array([0, 5]), T=10, stride=2)
    assert vols.shape == (2, 10, 2, 2) and vols[1, :, 0, 0].tolist() == list(range(5, 25, 2))


def test_clip_table_chunks_runs_over_the_decoded_buffer():
    from vadray.clip_shards import CHUNK_FRAMES, CLIPS_SCHEMA, clip_table

    seg = {"video_id": "cam/v", "camera": "c", "uri": "s3://b/cam/v.mp4", "fps": 10.0, "width": 4,
           "height": 3, "video_key": "cam%2Fv"}
    index = np.array([0, 1, 2, 5, 6] + list(range(10, 10 + 2 * CHUNK_FRAMES + 6)))  # gaps: lost frames
    frames = np.random.default_rng(0).integers(0, 256, (index.size, 3, 3), dtype=np.uint8)
    table = clip_table(seg, index, index / 10.0, frames, 3)
    assert table.schema == CLIPS_SCHEMA
    assert table.column("start_frame").to_pylist() == [0, 5, 10, 10 + CHUNK_FRAMES, 10 + 2 * CHUNK_FRAMES]
    assert table.column("num_frames").to_pylist() == [3, 2, CHUNK_FRAMES, CHUNK_FRAMES, 6]
    rows = table.to_pylist()
    back = np.concatenate([np.frombuffer(r["frames"], np.uint8).reshape(r["num_frames"], 3, 3) for r in rows])
    np.testing.assert_array_equal(back, frames)
    np.testing.assert_allclose(np.concatenate([r["time_s"] for r in rows]), index / 10.0)
    assert {r["video_key"] for r in rows} == {"cam%2Fv"} and rows[0]["size"] == 3
    assert clip_table(seg, index[:0], index[:0] / 10.0, frames[:0], 3).num_rows == 0


def test_gain_correction_undoes_a_global_gain_and_ignores_a_small_intruder():
    rng = np.random.default_rng(5)
    scene = rng.integers(60, 150, size=(32, 32))                  # a fixed camera: one scene, some noise
    frames = (scene + rng.integers(-2, 3, size=(6, 32, 32))).astype(np.uint8)
    stats = NormStats.from_sums(PartialSums.of(frames))
    brighter = np.clip(frames * 1.3, 0, 255).astype(np.uint8)
    restored = stats.gain_corrected(brighter).astype(int)
    assert np.abs(restored - frames).max() <= 2
    intruder = frames.copy()
    intruder[:, :6, :6] = 255                                     # 3.5 % of the frame
    assert np.abs(stats.gain_corrected(intruder).astype(int) - intruder).mean() < 2
    with pytest.raises(ValueError, match="uint8"):
        stats.gain_corrected(frames.astype(np.float32))
    assert stats.gains(np.zeros((0, 32, 32), np.uint8)).shape == (0,)   # a segment with nothing decoded


@pytest.mark.parametrize("size", [27, 28])
def test_gains_are_the_median_ratio_to_the_mean_image(size):
    rng = np.random.default_rng(size)
    frames = rng.integers(0, 256, size=(5, size, size), dtype=np.uint8)
    frames[1] = 17                                                 # a flat frame
    frames[2] = 15                                                 # one too dark for a gain
    stats = NormStats.from_sums(PartialSums.of(frames))
    expected = np.median(frames.reshape(5, -1), axis=1) / (float(np.median(stats.mean_image)) * 255.0)
    expected[2] = np.nan
    np.testing.assert_array_equal(stats.gains(frames), expected)


def test_dark_frames_and_dark_footage_have_no_gain_and_are_not_corrected():
    """A night frame's median of 0 gave gain 0, and the correction (divide by max(g, 1e-3))
    turned every lit pixel 255; a dim frame was multiplied by ~180; footage mostly black gave
    every frame gain 0 (scoring-math review)."""
    rng = np.random.default_rng(1)
    day = rng.integers(150, 210, size=(8, 27, 27)).astype(np.uint8)
    stats = NormStats.from_sums(PartialSums.of(day))
    night = np.zeros((2, 27, 27), np.uint8)
    night[1, :3, :3] = 40
    dim = np.full((1, 27, 27), 1, np.uint8)
    dim[0, :3, :3] = 60
    assert np.isnan(stats.gains(night)).all() and np.isnan(stats.gains(dim)).all()
    np.testing.assert_array_equal(stats.gain_corrected(night), night)
    np.testing.assert_array_equal(stats.gain_corrected(dim), dim)
    quarter = (day // 6).astype(np.uint8)                         # lit, but at 1/6: held to 1/4
    assert stats.gain_corrected(quarter).max() <= 4 * quarter.max() + 1
    mostly_black = np.zeros((20, 27, 27), np.uint8)
    mostly_black[:, :5, :] = 200
    dark_stats = NormStats.from_sums(PartialSums.of(mostly_black))
    assert np.isnan(dark_stats.gains(mostly_black[:2])).all()
    np.testing.assert_array_equal(dark_stats.gain_corrected(mostly_black[:2]), mostly_black[:2])


def test_synth_command_writes_what_it_says_and_refuses_bad_numbers(tmp_path, capsys):
    from vadray.cli import main

    assert main(["synth", str(tmp_path / "ok"), "--videos", "2", "--frames", "12", "--anomalies", "fast"]) == 0
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["frame_labels.csv", "video001.mp4", "video002.mp4"]
    assert probe(str(tmp_path / "ok" / "video002.mp4")).num_frames == 12
    for flag, value in (("--videos", "-2"), ("--frames", "0"), ("--fps", "0"), ("--width", "15"),
                        ("--anomalies", "teleport"), ("--seed", "0")):
        where = "s3://bucket/bad" if flag == "--seed" else str(tmp_path / "bad")   # a good seed, a remote folder
        assert main(["synth", where, flag, value]) == 2
        assert "vadray synth: error:" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_camera_names_that_a_path_cannot_carry_unchanged_are_refused(tmp_path, capsys):
    from vadray.cli import main
    from vadray.listing import check_camera

    assert [check_camera(c) for c in ("lobby-2", "cam.3", "A_b")] == ["lobby-2", "cam.3", "A_b"]
    # 300 chars: every write failed; hive readers read __HIVE_DEFAULT_PARTITION__ as NULL
    for bad in ("lobby 2", "a/b", "..", "", "caméra", "a" * 101, "__HIVE_DEFAULT_PARTITION__"):
        with pytest.raises(UsageError, match="--camera"):
            check_camera(bad)
    # before any work: no Ray, nothing written
    assert main(["ingest", str(tmp_path / "archive"), str(tmp_path / "out"), "--camera", "lobby 2"]) == 2
    assert "letters, digits" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_what_probe_finds_wrong_but_survivable_becomes_rows_and_the_frames_go_on(tmp_path):
    """A truncated file and repeated timestamps are warnings: the segments are planned and one
    errors row each says what was found (mutation review: dropping the rows went unseen)."""
    (tmp_path / "src").mkdir()
    videos.truncated(str(tmp_path / "src" / "cut.mkv"))
    videos.repeated_pts_mkv(str(tmp_path / "src" / "twice.mkv"))
    plan = ProbeAndPlan(str(tmp_path / "out"), "cam", 60, 10, {})
    for ref in list_videos(str(tmp_path / "src")):
        assert plan(ref.to_dict())
    rows = read_errors(str(tmp_path / "out" / "errors")).to_pylist()
    assert sorted((r["video_id"], r["stage"], r["error_type"]) for r in rows) == [
        ("cut", "probe", "truncated"), ("twice", "probe", "timestamps")]


def test_credentials_are_refused_at_any_depth_of_storage_options():
    from vadray.storage import parse_storage_options

    with pytest.raises(UsageError, match="@FILE"):
        parse_storage_options('{"client_kwargs": {"aws_secret_access_key": "x"}}')
    assert parse_storage_options('{"client_kwargs": {"region_name": "eu-west-1"}}') == {
        "client_kwargs": {"region_name": "eu-west-1"}}
    # an SSE-C encryption key is a secret too, in any spelling (storage review)
    with pytest.raises(UsageError, match="@FILE"):
        parse_storage_options('{"s3_additional_kwargs": {"SSECustomerKey": "k"}}')


def test_storage_options_files_and_home_paths(tmp_path, monkeypatch):
    """A UTF-16 options file (PowerShell's `>`) was a traceback and exit 1; `~/shards` was
    recorded as <cwd>/~/shards, so `vadray train ~/shards …` could not find its shards
    (storage review)."""
    from vadray import storage

    utf16 = tmp_path / "s3.json"
    utf16.write_text('{"anon": true}', encoding="utf-16")
    with pytest.raises(UsageError, match="not UTF-8"):
        storage.parse_storage_options(f"@{utf16}")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage.absolute("~/shards") == str(tmp_path / "shards")
    assert storage.absolute("file://~/shards") == str(tmp_path / "shards")


def test_an_unexpected_failure_is_an_errors_row_with_its_traceback_in_the_log(tmp_path, monkeypatch, caplog):
    """A bug (here a TypeError in probing) must not pass for a bad video: the input still gets
    its errors row, and the task's log keeps the traceback a bad video would not have."""
    import logging

    import vadray.stages as stages
    from vadray.errors import read_errors
    from vadray.listing import VideoRef

    def broken_probe(*args, **kwargs):
        raise TypeError("a bug, not a bad video")

    monkeypatch.setattr(stages, "probe", broken_probe)
    ref = VideoRef("clip", str(tmp_path / "clip.mp4"))
    with caplog.at_level(logging.ERROR, logger="vadray.stages"):
        assert ProbeAndPlan(str(tmp_path / "out"), "cam", 60, 10, {})(ref.to_dict()) == []
    (row,) = read_errors(str(tmp_path / "out" / "errors")).to_pylist()
    assert (row["error_type"], row["message"]) == ("TypeError", "a bug, not a bad video")
    (record,) = caplog.records
    assert record.exc_info and record.exc_info[0] is TypeError and "probing" in record.getMessage()
    caplog.clear()
    monkeypatch.setattr(stages, "probe", lambda *a, **k: (_ for _ in ()).throw(InputError("empty", "no bytes")))
    with caplog.at_level(logging.ERROR, logger="vadray.stages"):
        ProbeAndPlan(str(tmp_path / "out2"), "cam", 60, 10, {})(ref.to_dict())
    assert not caplog.records, "bad input is the errors row's business, not a traceback's"


def test_file_keys_never_hide_from_arrow():
    """Arrow's dataset discovery skips files starting with '.' or '_': a video `.cam1.mp4` (or
    an S3 key `../x.mp4`) was scored, then missing from evaluate and report (security review)."""
    from vadray.errors import safe_key

    for video_id in (".cam1", "../x", "_private", "..", "a/.hidden/b", "ok"):
        key = safe_key(video_id)
        assert not key.startswith((".", "_")) and "/" not in key, (video_id, key)
    assert safe_key(".cam1") != safe_key("cam1")          # the hash keeps them apart


def test_frames_per_second_leave_out_the_start_of_a_local_ray():
    """A short job's frames/s was mostly Ray's start-up (a local Ray takes seconds): the rate is
    of the job's own time, and the line says how much of the total starting Ray took."""
    from vadray.ingest import IngestSummary
    from vadray.score import ScoreSummary

    started = IngestSummary(videos=2, frames=300, seconds=5.0, ray_start_seconds=2.0)
    assert started.fps == 100.0
    assert started.line().endswith("5.0 s (2.0 s of it starting or joining Ray), 100.0 frames/s")
    joined = ScoreSummary(videos=2, frames=300, seconds=3.0)   # Ray was up already: nothing to leave out
    assert joined.fps == 100.0 and joined.line().endswith(" 3.0 s, 100.0 frames/s")
    # people read these lines: one of a thing is singular
    one = IngestSummary(videos=1, segments=1, frames=1, seconds=1.0, errors=[{"error_type": "decode_failed"}])
    assert one.line().startswith("ingest: 1 video (0 failed), 1 segment, 1 frame, 1 error row, 0 notes, "), one.line()
    assert ScoreSummary(videos=1, events=1).line().startswith("score: 1 video (0 already done, 0 failed), "
                                                             "0 frames, 1 event, 0 error rows, 0 notes, ")


def test_a_store_that_refuses_a_delete_outright_is_found_before_any_work(monkeypatch):
    """The write check's probe is deleted through storage.delete; a store whose rm raises (a 403
    from another store than S3) was then taken as one that may delete (diff review)."""
    from fsspec.implementations.memory import MemoryFileSystem

    from vadray import storage
    from vadray.exits import UsageError

    def refuse(self, *args, **kwargs):
        raise PermissionError("403 Forbidden")

    monkeypatch.setattr(MemoryFileSystem, "rm", refuse)
    with pytest.raises(UsageError, match="cannot delete in OUTPUT 'memory://vadray-test/out'"):
        storage.require_folder_to_write({}, must_delete=True, OUTPUT="memory://vadray-test/out")
    storage.require_folder_to_write({}, OUTPUT="memory://vadray-test/report")   # a job that deletes nothing
