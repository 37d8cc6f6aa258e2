//! A fake kubelet for device plugin tests: the `Registration` server on `kubelet.sock`, and the
//! kubelet's client side of the `DevicePlugin` service, all over real unix sockets and real gRPC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_kubelet_proto::deviceplugin::v1beta1 as api;
use gantry_kubelet_proto::transport::connect_uds;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Debug, Clone)]
struct Registrar {
    tx: mpsc::UnboundedSender<api::RegisterRequest>,
}

#[tonic::async_trait]
impl api::registration_server::Registration for Registrar {
    async fn register(
        &self,
        request: tonic::Request<api::RegisterRequest>,
    ) -> Result<tonic::Response<api::Empty>, tonic::Status> {
        let request = request.into_inner();
        if request.version != api::VERSION {
            return Err(tonic::Status::invalid_argument(format!(
                "unsupported version {}",
                request.version
            )));
        }
        let _ = self.tx.send(request);
        Ok(tonic::Response::new(api::Empty {}))
    }
}

/// The kubelet as a device plugin sees it. Hold it for the whole test.
#[derive(Debug)]
pub struct FakeKubelet {
    dir: PathBuf,
    rx: mpsc::UnboundedReceiver<api::RegisterRequest>,
    tx: mpsc::UnboundedSender<api::RegisterRequest>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl FakeKubelet {
    /// Serves `Registration` on `<dir>/kubelet.sock`.
    pub async fn start(dir: &Path) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut kubelet = Self {
            dir: dir.to_owned(),
            rx,
            tx,
            server: None,
        };
        kubelet.serve();
        kubelet
    }

    fn serve(&mut self) {
        let path = self.dir.join(api::KUBELET_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind kubelet.sock");
        let (stop_tx, stop_rx) = oneshot::channel();
        let registrar = Registrar {
            tx: self.tx.clone(),
        };
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(api::registration_server::RegistrationServer::new(registrar))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("fake kubelet server");
        });
        self.server = Some((stop_tx, task));
    }

    /// The next `Register` call, waiting up to `timeout`.
    pub async fn next_registration(&mut self, timeout: Duration) -> Option<api::RegisterRequest> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Restarts as the kubelet does: stops, deletes every socket in the plugin directory, serves a new
    /// `kubelet.sock`.
    pub async fn restart(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        for entry in std::fs::read_dir(&self.dir)
            .expect("read plugin dir")
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "sock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.serve();
    }

    /// A `DevicePlugin` client on the plugin's socket, as the kubelet dials it.
    pub async fn plugin(
        &self,
        endpoint: &str,
    ) -> api::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
        let channel = connect_uds(self.dir.join(endpoint))
            .await
            .expect("dial plugin socket");
        api::device_plugin_client::DevicePluginClient::new(channel)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
