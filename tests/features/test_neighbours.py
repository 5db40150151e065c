"""Nearest neighbours (torch's exact search, faiss's inverted file) against brute force, the inverted-file index's recall, near-duplicate pairs, and the
command on a folder of embeddings as `embed` writes it."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.evaluation.embeddings import embedding_array
from pipelines.features.neighbours import build_index, near_duplicates, nearest, unit_rows
from pipelines.neighbours import main


def clustered(count: int, width: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, width))
    return (centres[rng.integers(0, 20, count)] + 0.5 * rng.normal(size=(count, width))).astype(np.float32)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(unit_rows(queries) @ unit_rows(vectors).T), axis=1)[:, :k]


def test_the_exact_index_finds_the_brute_force_neighbours_and_the_inverted_file_nearly_all(monkeypatch):
    import pipelines.features.neighbours as neighbours

    vectors, queries = clustered(3000), clustered(50, seed=1)
    found = nearest(build_index(vectors), queries, 5)
    assert (found.indices == brute_force(vectors, queries, 5)).all()
    cosine = unit_rows(queries) @ unit_rows(vectors).T
    assert np.allclose(found.similarities, np.take_along_axis(cosine, found.indices, 1), atol=1e-5)
    monkeypatch.setattr(neighbours, "SIMILARITIES_AT_ONCE", 7 * 3000)  # 7 queries a chunk: the same answer
    chunked = nearest(build_index(vectors), queries, 5)
    assert (chunked.indices == found.indices).all() and np.allclose(chunked.similarities, found.similarities)
    few = nearest(build_index(vectors[:3]), queries[:2], 5)  # fewer vectors than k: the rest -1, as faiss pads
    assert (few.indices[:, :3] == brute_force(vectors[:3], queries[:2], 3)).all() and (few.indices[:, 3:] == -1).all()
    approximate = nearest(build_index(vectors, ivf_from=1000), queries, 5)  # 219 lists, 37 probed
    exact = brute_force(vectors, queries, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(approximate.indices, exact)])
    assert recall >= 0.95, recall


def test_near_duplicates_are_the_planted_pairs_most_similar_first():
    vectors = clustered(200)
    rng = np.random.default_rng(2)
    vectors[[10, 20, 30]] = vectors[[110, 120, 130]] + rng.normal(scale=[[0.001], [0.01], [0.05]], size=(3, 32))
    pairs = near_duplicates(vectors, 0.995)
    assert [(i, j) for i, j, _ in pairs] == [(10, 110), (20, 120), (30, 130)]
    assert pairs[0][2] > pairs[1][2] > pairs[2][2] >= 0.995


def test_the_command_names_each_files_nearest_files_and_the_near_duplicates(tmp_path, capsys):
    vectors = clustered(40)
    vectors[7] = vectors[3] * 1.5  # the same direction: a duplicate however it was scaled
    files = [f"photos/img{index:02d}.jpg" for index in range(40)]
    folder = tmp_path / "embeddings" / "train"
    folder.mkdir(parents=True)
    order = np.random.default_rng(3).permutation(40)  # Ray Data writes rows in any order
    pq.write_table(pa.table({"row": pa.array(order, pa.int64()), "label": pa.nulls(40, pa.int32()),
                             "source": pa.array([files[i] for i in order]), "embedding": embedding_array(vectors[order])}),
                   folder / "part.parquet")
    assert main(["--embeddings", str(folder), "--k", "2", "--duplicates", "0.999"]) == 0
    printed = capsys.readouterr().out
    lines = {line.split(": ")[0]: line for line in printed.splitlines() if ": " in line}
    assert lines["photos/img03.jpg"].startswith("photos/img03.jpg: photos/img07.jpg 1.000")
    assert "photos/img03.jpg, photos/img03.jpg" not in printed  # an image is not its own neighbour
    assert "1 near-duplicate pair(s):" in printed and "photos/img03.jpg  photos/img07.jpg" in printed
    assert main(["--embeddings", str(folder), "--k", "0"]) == 2
    assert "--k: Input should be greater than or equal to 1" in capsys.readouterr().err
