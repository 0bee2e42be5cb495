output "discovery_urls" {
  description = "Discovery node URLs for the proxies' discovery.urls."
  value       = local.discovery_urls
}

output "etcd_endpoints" {
  description = "etcd client URLs ([store] endpoints of the discovery nodes)."
  value       = local.etcd_endpoints
}

output "discovery_private_ips" {
  description = "Private addresses of the discovery nodes (Prometheus targets)."
  value       = aws_instance.discovery[*].private_ip
}
