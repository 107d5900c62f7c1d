//! Loopback fakes of the services regent talks to: [`http`], a tiny HTTP/1.1
//! server the others are built on; [`script`], the scripted replies, gate
//! and death they share; [`ecr`], ECR's and STS's token APIs;
//! [`github`], GitHub's installation-token endpoint; [`gcp`], Google's
//! OAuth2 token endpoint and metadata server; [`acr`], Entra ID's token
//! endpoint, Azure's managed-identity endpoint and an Azure Container
//! Registry's token exchange; [`token_registry`], a registry behind a
//! distribution token server; and [`distribution_token`], a token server
//! whose JWTs a real `docker-registry` verifies.

pub mod acr;
pub mod distribution_token;
pub mod ecr;
pub mod gcp;
pub mod github;
pub mod http;
pub mod script;
pub mod token_registry;
