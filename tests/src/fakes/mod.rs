//! Loopback fakes of the services regent talks to: [`http`], a tiny HTTP/1.1
//! server the others are built on, and [`ecr`], ECR's and STS's token APIs.

pub mod ecr;
pub mod http;
