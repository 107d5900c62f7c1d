<#
.SYNOPSIS
  Registers (or removes) a Task Scheduler task that starts the regent agent at logon.

.DESCRIPTION
  The task runs as the current user, only while that user is logged on (the
  Windows Credential Manager is only reachable from the interactive session),
  with no execution time limit, and restarts the agent if it fails.
  It runs "regent.exe agent --foreground" through "conhost.exe --headless",
  so no console window appears.

.EXAMPLE
  .\regent-autostart.ps1 -BinDir "$env:LOCALAPPDATA\Programs\regent"
.EXAMPLE
  .\regent-autostart.ps1 -Remove
#>
param(
    [string]$BinDir = (Join-Path $env:LOCALAPPDATA 'Programs\regent'),
    [string]$TaskName = 'regent agent',
    [switch]$Remove
)

$ErrorActionPreference = 'Stop'

if ($Remove) {
    Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false -ErrorAction SilentlyContinue
    Write-Host "Removed the scheduled task '$TaskName' (if it existed)."
    return
}

$regent = Join-Path $BinDir 'regent.exe'
if (-not (Test-Path $regent)) {
    throw "regent.exe not found in $BinDir; pass -BinDir with the directory that holds regent.exe"
}

$user = [System.Security.Principal.WindowsIdentity]::GetCurrent().Name
$action = New-ScheduledTaskAction -Execute 'conhost.exe' `
    -Argument "--headless `"$regent`" agent --foreground"
$trigger = New-ScheduledTaskTrigger -AtLogOn -User $user
$principal = New-ScheduledTaskPrincipal -UserId $user -LogonType Interactive -RunLevel Limited
$settings = New-ScheduledTaskSettingsSet `
    -ExecutionTimeLimit ([TimeSpan]::Zero) `
    -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1) `
    -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
    -MultipleInstances IgnoreNew

Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger `
    -Principal $principal -Settings $settings -Force | Out-Null
Write-Host "Registered the scheduled task '$TaskName': $regent agent --foreground at logon of $user."
Write-Host "Start it now with: Start-ScheduledTask -TaskName '$TaskName'"
