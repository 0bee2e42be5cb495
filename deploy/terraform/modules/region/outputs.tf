output "server_ids" {
  description = "Server ids of this region."
  value       = local.server_ids
}

output "server_urls" {
  description = "Locked-server URLs (server.public_url)."
  value       = [for f in local.server_fqdns : "https://${f}"]
}

output "server_private_ips" {
  description = "Private addresses, for Prometheus targets on the admin port."
  value       = aws_instance.server[*].private_ip
}

output "health_check_ids" {
  description = "Route 53 health check per server."
  value       = aws_route53_health_check.server[*].id
}
