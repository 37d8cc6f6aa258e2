//! Against a real cluster (`KUBECONFIG`): the API server accepts the generated CRD, and its CEL rules
//! reject an invalid TFJob. Run with `cargo test -p gantry-operator --test cluster -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gantry_tfjob::TFJob;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};

#[tokio::test]
#[ignore = "needs a Kubernetes cluster"]
async fn the_api_server_accepts_the_crd_and_rejects_invalid_jobs() {
    let client = kube::Client::try_default().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = gantry_operator::crd::crd_json().unwrap();
    crds.patch(
        gantry_operator::crd::CRD_NAME,
        &PatchParams::apply("gantry-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let jobs: Api<TFJob> = Api::namespaced(client, "default");
    let bad: TFJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": "gantry-cel-test"},
        "spec": {"tfReplicaSpecs": {"Worker": {"template": {"spec": {"containers": [{"name": "main", "image": "tf"}]}}}}},
    }))
    .unwrap();
    let err = jobs.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(err.to_string().contains("tensorflow"), "{err}");
}
