"""The HTML helpers of `pawlab.display`: escaping, tables, thumbnails, the confusion matrix,
the inline SVG charts, and that nothing points outside the page."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pawlab import display
from pawlab.errors import DataError

EVIL = "<script>alert(\"x\")</script> & 'q'"


def _img_size(tag: str) -> tuple[int, int]:
    """The pixel size of the image in a thumbnail's data URI."""
    match = re.search(r'src="data:image/(png|jpeg);base64,([^"]+)"', tag)
    assert match, tag[:200]
    return Image.open(io.BytesIO(base64.b64decode(match.group(2)))).size


def assert_self_contained(html: str) -> None:
    """No script, and nothing fetched: every source a ``data:`` URI, no URL anywhere else."""
    text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", html)
    assert "<script" not in text and "http" not in text and "//" not in text
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))


def test_escape_text_and_keep_markup() -> None:
    assert display.escape(EVIL) == ("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;")
    markup = display.Html("<b>bold</b>")
    assert display.escape(markup) is markup
    assert display.escape(3) == "3"


def test_number_formats() -> None:
    assert display.number(1234567) == "1,234,567"
    assert display.number(np.int64(12)) == "12"
    assert display.number(0.99304) == "0.9930"
    assert display.number(np.float32(0.5), digits=2) == "0.50"
    assert display.number(float("nan")) == "-" and display.number(None) == "-"
    assert display.number(True) == "True"


def test_table_escapes_cells_and_formats_numbers() -> None:
    html = display.table([[EVIL, 0.123456, 1500], [display.Html("<i>x</i>"), None, 2]], ["name", "p", "n"])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "0.1235" in html and "1,500" in html and "<i>x</i>" in html
    assert html.count("<tr>") == 3 and html.count("<th") == 3
    assert re.search(r"text-align:right[^>]*>0\.1235<", html)
    assert_self_contained(html)


def test_fields_section_and_details() -> None:
    html = display.section(
        "title <1>", display.fields({"accuracy": 0.5, "name": EVIL}), "plain <text>", display.paragraph("a&b")
    )
    assert "title &lt;1&gt;" in html and "0.5000" in html and "&lt;script&gt;" in html
    assert "plain &lt;text&gt;" in html and "a&amp;b" in html
    folded = display.details("more <stuff>", display.Html("<p>x</p>"))
    assert folded.startswith("<details>") and "more &lt;stuff&gt;" in folded and "<p>x</p>" in folded
    assert display.details("s", "b", expanded=True).startswith("<details open>")


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 1), (16, 20, 3), (12, 12, 4)])
def test_thumbnail_of_small_arrays_is_an_enlarged_png(shape: tuple[int, ...]) -> None:
    arr = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    tag = display.thumbnail(arr, title='a "cat"')
    assert tag.startswith('<img src="data:image/png;base64,')
    assert _img_size(tag) == (shape[1], shape[0])  # the pixels as they are: small
    assert 'width="32"' in tag and f'height="{round(32 * shape[0] / shape[1])}"' in tag  # shown larger
    assert "pixelated" in tag and 'title="a &quot;cat&quot;"' in tag
    assert_self_contained(tag)


def test_thumbnail_of_a_large_array_or_file_is_a_small_jpeg(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    tag = display.thumbnail(arr)
    assert tag.startswith('<img src="data:image/jpeg;base64,') and _img_size(tag) == (64, 96)
    path = tmp_path / "big.png"
    Image.fromarray(arr).save(path)
    from_file = display.thumbnail(path, max_px=48)
    assert "data:image/" in from_file and max(_img_size(from_file)) == 48
    assert len(from_file) < 8000  # a notebook stays small


def test_thumbnail_of_an_unreadable_file_is_a_note_and_bad_arrays_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "<bad>.jpg"
    bad.write_bytes(b"not an image")
    note = display.thumbnail(bad)
    assert "unreadable" in note and "&lt;bad&gt;" in note and "<img" not in note
    assert "unreadable" in display.thumbnail(tmp_path / "missing.png")
    with pytest.raises(DataError, match="uint8"):
        display.thumbnail(np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="uint8"):
        display.thumbnail(np.zeros((4, 4, 2), np.uint8))


def test_shrink_keeps_small_images_and_shrinks_large_ones() -> None:
    small = np.zeros((16, 16, 1), np.uint8)
    kept = display.shrink(small)
    assert kept.shape == (16, 16, 1) and kept is not small
    assert display.shrink(np.zeros((200, 100, 3), np.uint8)).shape == (96, 48, 3)
    assert display.shrink(np.zeros((200, 200, 1), np.uint8), 32).shape == (32, 32, 1)


def test_embedded_image_is_the_file_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    Image.new("RGB", (300, 60), "white").save(path)
    tag = display.embedded_image(path, title="grid <1>")
    match = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
    assert match and base64.b64decode(match.group(1)) == path.read_bytes()
    assert 'title="grid &lt;1&gt;"' in tag
    assert "unreadable" in display.embedded_image(tmp_path / "none.png")


def test_confusion_matrix_shows_counts_coloured_by_row_share() -> None:
    html = display.confusion_matrix([[90, 10], [0, 5]], ["cat", "<dog>"])
    cells = re.findall(
        r'<td style="[^"]*background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)[^"]*" title="([^"]*)">([\d,]+)</td>',
        html,
    )
    assert [c[5] for c in cells] == ["90", "10", "0", "5"]
    assert [float(c[3]) for c in cells] == [0.9, 0.1, 0.0, 1.0]
    assert cells[0][:3] == ("30", "140", "60") and cells[1][:3] == ("210", "40", "40")  # right, wrong
    assert "cat predicted as &lt;dog&gt;: 10 of 100 (10.0%)" in html and "<dog>" not in html
    assert "true \\ predicted" in html
    empty_row = display.confusion_matrix([[0, 0], [1, 1]], ["a", "b"])
    assert "rgba(30,140,60,0.000)" in empty_row  # a class with no images: no division by zero


def test_line_chart_is_inline_svg_with_a_line_per_series() -> None:
    svg = display.line_chart(
        {"train_loss": [(1, 0.9), (2, 0.5), (3, 0.3)], "<val>": [(1, 1.0), (2, float("nan")), (3, 0.4)]},
        title="loss",
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "xmlns" not in svg
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 5  # the NaN left out
    assert "&lt;val&gt;" in svg and "<val>" not in svg and ">loss</text>" in svg
    assert "train_loss at 2: 0.5" in svg  # a point's tooltip
    assert_self_contained(svg)


def test_line_chart_of_one_point_or_no_data() -> None:
    one = display.line_chart({"val_accuracy": [(1, 0.5)]})
    assert "<polyline" not in one and one.count("<circle") == 1 and ">1</text>" in one
    assert "no data" in display.line_chart({"a": [(1, float("inf"))]}, title="loss")
    assert "no data" in display.line_chart({})


def test_curves_draw_losses_and_accuracies_per_epoch() -> None:
    history = [
        {"epoch": 1.0, "train_loss": 0.7, "val_loss": 0.6, "val_accuracy": 0.5, "lr": 0.001},
        {"epoch": 2.0, "train_loss": 0.5, "val_loss": 0.55, "val_accuracy": 0.75, "lr": 0.001},
    ]
    html = display.curves(history)
    assert html.count("<svg") == 2 and ">loss</text>" in html and ">accuracy</text>" in html
    assert "train_loss" in html and "val_loss" in html and "val_accuracy" in html and ">lr<" not in html
    assert "no epochs" in display.curves([])
    only_loss = display.curves([{"epoch": 1.0, "val_loss": 0.3}])
    assert only_loss.count("<svg") == 1
