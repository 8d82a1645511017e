

def test_items_parquet_records_attribute_kinds_and_old_files_get_them_from_types():
    import io
    import pyarrow as pa
    import pyarrow.parquet as pq
    from recsys.data.dataset import read_items, with_attribute_kinds
    table = pa.table({"item": ["a"], "title": ["A"], "blurb": ["soft wool"], "brand": ["Acme"],
                      "tags": [["x", "y"]], "price": [3.5]})

    def kinds(t):
        sink = io.BytesIO()
        pq.write_table(t, sink)
        return read_items(sink.getvalue()).attrs["kinds"]
    assert kinds(table) == {"blurb": "categorical", "brand": "categorical", "tags": "multi", "price": "numeric"}
    marked = with_attribute_kinds(table, {"blurb": "text", "brand": "categorical", "tags": "multi", "price": "numeric"})
    assert kinds(marked)["blurb"] == "text" and marked.column("tags").to_pylist() == [["x", "y"]]
