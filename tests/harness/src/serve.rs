//! An axum app served on a tokio runtime of its own, on a dedicated thread,
//! so plain `#[test]` functions can use the test doubles; dropping the
//! handle stops the server.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

/// A running server.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `app` on `listener` (already bound); `name` names the threads
    /// and prefixes error lines.
    pub(crate) fn start(
        name: &'static str,
        listener: std::net::TcpListener,
        app: axum::Router,
    ) -> anyhow::Result<Server> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(name).enable_all().build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => return eprintln!("{name}: cannot serve on {addr}: {e}"),
                };
                tokio::select! {
                    result = axum::serve(listener, app) => {
                        if let Err(e) = result {
                            eprintln!("{name}: server failed: {e}");
                        }
                    }
                    _ = stopped => {}
                }
            });
            // Dropping the runtime closes the listener and every connection,
            // hung and delayed answers included.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        Ok(Server { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the server's thread.
    pub(crate) fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}
