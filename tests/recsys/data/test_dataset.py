

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


def test_the_generated_shop_log_has_funnels_in_time_order_and_the_asked_size():
    import numpy as np
    from recsys.data.synthetic import shop_catalog, shop_events
    catalog = shop_catalog(500, seed=1)
    events = shop_events(20_000, 400, catalog, seed=1)
    assert abs(len(events) - 20_000) < 1_000 and events["user_id"].nunique() <= 400
    assert set(events["item_id"]) <= set(catalog["item_id"])
    counts = events["event_type"].value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"] > 0
    # a purchase follows a cart of the same item by the same user, later in time
    e = events.reset_index(drop=True)
    buy = e.index[e["event_type"] == "purchase"]
    prev = e.loc[buy - 1]
    assert (prev["event_type"].to_numpy() == "cart").all() and (prev["item_id"].to_numpy() == e.loc[buy, "item_id"].to_numpy()).all()
    assert (e.loc[buy, "timestamp"].to_numpy() > prev["timestamp"].to_numpy()).all()
    # users keep to their categories: the top category's share is far above a uniform 1/10
    cat = catalog.set_index("item_id")["category"]
    share = e.assign(c=cat.reindex(e["item_id"]).to_numpy()).groupby("user_id")["c"].agg(
        lambda s: s.value_counts(normalize=True).iloc[0])
    assert np.median(share) > 0.3
