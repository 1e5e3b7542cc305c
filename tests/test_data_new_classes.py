"""The class file of `scegg add-classes`: names and attribute rows, checked against the model's A."""
import numpy as np
import pytest

from modeling_scegg.data.new_classes import read_new_classes


def test_reads_names_and_attribute_rows(tmp_path):
    (tmp_path / "new.csv").write_text("class_name,a,b,c\nblue_jay,1,2.5,0\n\nkiwi,0,0,7\n")
    names, attributes = read_new_classes(tmp_path / "new.csv", 3)
    assert names == ["blue_jay", "kiwi"]
    np.testing.assert_array_equal(attributes, [[1, 2.5, 0], [0, 0, 7]])
    assert attributes.dtype == np.float32


@pytest.mark.parametrize("text, message", [
    ("class_name,a,b\nx,1,2\n", "the model's 3 attribute columns, got 2"),
    ("name,a,b,c\nx,1,2,3\n", "header must be 'class_name'"),
    ("class_name,a,b,c\nx,1,2\n", "line 2: expected a class name and 3 values"),
    ("class_name,a,b,c\nx,1,two,3\n", r"line 2 \(class 'x'\): attribute values must be numbers"),
    ("class_name,a,b,c\nx,1,nan,3\n", "must be finite"),
    ("class_name,a,b,c\n", "lists no classes"),
])
def test_bad_class_files_say_where(tmp_path, text, message):
    (tmp_path / "new.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_new_classes(tmp_path / "new.csv", 3)
