//! Collection names at the index service, on both backends: names that no
//! URL can address are refused at creation, and names of any length are
//! answered with a short, clear status (a status quoting a 20 KB name did
//! not fit in the caller's header limit, and the caller saw a broken
//! connection and marked the index down).

use cbir_api::v1 as pb;
use tonic::Code;

use crate::both_backends;
use crate::service::{create, Server};

async fn names(url: &str) {
    let server = Server::start(url).await;
    let mut c = server.client.clone();
    for name in [".", "..", "...", "a/b", "a b", "é"] {
        let err = c
            .create_collection(pb::CreateCollectionRequest {
                name: name.into(),
                model: Some(pb::ModelRef {
                    name: "m".into(),
                    version: "v".into(),
                }),
                dims: 16,
                ..Default::default()
            })
            .await
            .expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}: {err:?}");
    }
    create(&mut c, ".hidden", 16).await;
    let huge = "n".repeat(20_000);
    for name in ["n".repeat(129), huge.clone()] {
        let err = c
            .get_collection(pb::GetCollectionRequest { name: name.clone() })
            .await
            .expect_err("no such collection");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("at most 128 bytes"), "{err:?}");
        let err = c
            .stats(pb::StatsRequest {
                collection: name.clone(),
            })
            .await
            .expect_err("no such collection");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = c
        .watch_operation(pb::WatchOperationRequest {
            operation_id: huge.clone(),
        })
        .await
        .map(|_| ())
        .err();
    if let Some(err) = err {
        assert!(err.message().len() < 300, "{}", err.message().len());
    }
    // Still serving, and the good name is there.
    let r = c
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("list");
    let names: Vec<String> = r
        .into_inner()
        .collections
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, [".hidden"]);
    server.stop().await;
}

both_backends!(names_that_urls_break_and_long_names, names);
