//! One-time reads from the API server (list, no watch), for commands that run once, such as
//! `mlguard audit --cluster`, and the client set-up shared with the watch.
//!
//! - [`read_state`] needs list on resourcequotas, nodes and namespaces, and on
//!   deviceclasses, resourceclaims, resourceclaimtemplates and resourceslices of
//!   resource.k8s.io where that group version is served (the server's rules).
//! - [`list_workloads`] needs list on pods and on jobs.batch as well, which the server does
//!   not: grant it to whoever runs the audit, not to mlguard's ServiceAccount.

use std::path::Path;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ResourceQuota};
use k8s_openapi::api::resource::v1::{
    DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice,
};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value as Json;

use super::ClusterState;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("Kubernetes client configuration: {}: {source}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("Kubernetes client configuration: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("Kubernetes client configuration: {0}")]
    Client(#[source] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot start an async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot discover whether resource.k8s.io/v1 is served: {0}")]
    Discovery(#[source] kube::Error),
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// A client from `kubeconfig` if given, else from the environment: the in-cluster
/// ServiceAccount when running in a pod, otherwise `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ListError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = |source| ListError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig)?
        }
        None => kube::Config::infer().await.map_err(ListError::Infer)?,
    };
    client_from_config(config)
}

/// A client with mlguard's settings. The client's own retry of 429/503/504 answers is turned
/// off: it waits up to minutes without reporting anything, which would hide an outage from the
/// watch task; the watchers retry with their own backoff and say so.
pub fn client_from_config(mut config: kube::Config) -> Result<Client, ListError> {
    config.default_retry = false;
    Client::try_from(config).map_err(ListError::Client)
}

/// Pages through a list, 500 objects at a time as kubectl does.
async fn list_all<K>(
    api: Api<K>,
    what: &'static str,
    params: ListParams,
) -> Result<Vec<K>, ListError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.limit(500);
    let mut out = Vec::new();
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|source| ListError::List { what, source })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// The cluster state as the API server reports it now: the same model as the live watch and
/// `--cluster-snapshot`, read once.
pub async fn read_state(client: &Client) -> Result<ClusterState, ListError> {
    let (quotas, nodes, namespaces) = futures::try_join!(
        list_all(
            Api::<ResourceQuota>::all(client.clone()),
            "resourcequotas",
            ListParams::default()
        ),
        list_all(
            Api::<Node>::all(client.clone()),
            "nodes",
            ListParams::default()
        ),
        list_all(
            Api::<Namespace>::all(client.clone()),
            "namespaces",
            ListParams::default()
        ),
    )?;
    let mut state = ClusterState::default();
    namespaces.iter().for_each(|n| state.add_namespace(n));
    quotas.iter().for_each(|q| state.add_quota(q));
    nodes.iter().for_each(|n| state.add_node(n));
    if let Some(served) = dra_served(client).await? {
        read_dra(client, &served, &mut state).await?;
    }
    state.finish_dra();
    Ok(state)
}

/// The DRA resources the API server serves, or None when it does not serve
/// resource.k8s.io/v1 (a 404 on its discovery document): a cluster without DRA is read as
/// before. Unlike the watch, which retries, a one-time read fails on any other error.
async fn dra_served(client: &Client) -> Result<Option<Vec<String>>, ListError> {
    match client
        .list_api_group_resources(super::watch::DRA_GROUP_VERSION)
        .await
    {
        Ok(list) => Ok(Some(list.resources.into_iter().map(|r| r.name).collect())),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::info!("resource.k8s.io/v1 is not served; DRA objects are not read");
            Ok(None)
        }
        Err(e) => Err(ListError::Discovery(e)),
    }
}

async fn read_dra(
    client: &Client,
    served: &[String],
    state: &mut ClusterState,
) -> Result<(), ListError> {
    async fn list_if<K>(
        client: &Client,
        served: &[String],
        what: &'static str,
    ) -> Result<Vec<K>, ListError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let resource = what.trim_end_matches(".resource.k8s.io");
        match served.iter().any(|r| r == resource) {
            true => list_all(Api::<K>::all(client.clone()), what, ListParams::default()).await,
            false => Ok(Vec::new()),
        }
    }
    let (classes, claims, templates, slices) = futures::try_join!(
        list_if::<DeviceClass>(client, served, "deviceclasses.resource.k8s.io"),
        list_if::<ResourceClaim>(client, served, "resourceclaims.resource.k8s.io"),
        list_if::<ResourceClaimTemplate>(client, served, "resourceclaimtemplates.resource.k8s.io"),
        list_if::<ResourceSlice>(client, served, "resourceslices.resource.k8s.io"),
    )?;
    classes.iter().for_each(|c| state.add_device_class(c));
    claims.iter().for_each(|c| state.add_resource_claim(c));
    templates
        .iter()
        .for_each(|t| state.add_resource_claim_template(t));
    slices.iter().for_each(|s| state.add_resource_slice(s));
    Ok(())
}

fn object_json<K: Serialize + ResourceExt>(mut object: K) -> Json {
    object.managed_fields_mut().clear();
    // k8s-openapi writes apiVersion and kind, which list items lack on the wire.
    let mut json = serde_json::to_value(&object).unwrap_or(Json::Null);
    if let Some(meta) = json.get_mut("metadata").and_then(Json::as_object_mut) {
        meta.remove("managedFields");
    }
    json
}

fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// The Pods that have not finished (phase other than Succeeded and Failed) and the Jobs that
/// have not finished (no true Complete or Failed condition), in `namespace` or in all
/// namespaces, as JSON objects with apiVersion and kind, managedFields removed. Pods first.
pub async fn list_workloads(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<Json>, ListError> {
    let (pods, jobs): (Api<Pod>, Api<Job>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let running = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let (pods, jobs) = futures::try_join!(
        list_all(pods, "pods", running),
        list_all(jobs, "jobs.batch", ListParams::default()),
    )?;
    Ok(pods
        .into_iter()
        .map(object_json)
        .chain(
            jobs.into_iter()
                .filter(|j| !job_finished(j))
                .map(object_json),
        )
        .collect())
}

/// For synchronous commands such as `mlguard audit`: the cluster state and, with `workloads`,
/// the running Pods and Jobs (of `namespace`, or of all namespaces), read once with the client
/// from [`client`] on a private runtime, within `timeout`. Must not be called from inside an
/// async runtime.
pub fn read_blocking(
    kubeconfig: Option<&Path>,
    namespace: Option<&str>,
    workloads: bool,
    timeout: std::time::Duration,
) -> Result<(ClusterState, Vec<Json>), ListError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ListError::Runtime)?;
    runtime.block_on(async {
        let read = async {
            let client = client(kubeconfig).await?;
            let state = read_state(&client).await?;
            let objects = match workloads {
                true => list_workloads(&client, namespace).await?,
                false => Vec::new(),
            };
            Ok((state, objects))
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ListError::Timeout(timeout))?
    })
}
