"""The mirror's path index answers what a scan of every publication would."""

from __future__ import annotations

from pathlib import PurePosixPath

from hypothesis import given
from hypothesis import strategies as st

from aiocsi.models import Publication, PublicationKind
from aiocsi.state.mirror import Mirror

_PARTS = st.sampled_from(["a", "b", "mount", "globalmount"])
_PATHS = st.lists(_PARTS, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_PUBS = st.builds(
    Publication,
    volume_id=st.sampled_from(["vol-1", "vol-2", "vol-3"]),
    kind=st.sampled_from([PublicationKind.STAGE, PublicationKind.PUBLISH]),
    path=_PATHS,
    node_id=st.just("node"),
)


def _scan(pubs: list[Publication], path: str) -> set[tuple[str, PublicationKind, str]]:
    here = PurePosixPath(path)
    return {
        (p.volume_id, p.kind, p.path)
        for p in pubs
        if (other := PurePosixPath(p.path)) == here
        or other in here.parents
        or here in other.parents
    }


@given(added=st.lists(_PUBS, max_size=12), forgotten=st.lists(_PUBS, max_size=6), path=_PATHS)
def test_publications_near_is_the_scan(
    added: list[Publication], forgotten: list[Publication], path: str
) -> None:
    mirror = Mirror()
    for p in added:
        mirror.add_publication(p)
    for p in forgotten:
        mirror.forget_publication(p.volume_id, p.kind, p.path)
    near = mirror.publications_near(path)
    assert len(near) == len({(p.volume_id, p.kind, p.path) for p in near})
    assert {(p.volume_id, p.kind, p.path) for p in near} == _scan(mirror.publications(), path)


def test_forgetting_everything_leaves_no_index_behind() -> None:
    mirror = Mirror()
    pub = Publication("vol-1", PublicationKind.STAGE, "/a/b/globalmount", "node")
    mirror.add_publication(pub)
    mirror.add_publication(pub)  # replaced, not doubled
    assert mirror.publications_near("/a") == [pub]
    mirror.forget_publication(pub.volume_id, pub.kind, pub.path)
    assert mirror.publications_near("/a/b/globalmount") == []
    assert mirror.publications_near("/a") == []
